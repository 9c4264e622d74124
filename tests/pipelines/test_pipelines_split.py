"""`--split heldout`: a dump of a held-out corpus says so in its manifest (evaluate reads it)."""

from test_pipelines_tokens_only import _argv

import store
from pipelines import dump
from store.schema import manifest_split


def test_split_heldout_is_recorded(corpus, tokenizer_path, tmp_path):
    directory, _ = corpus
    url = str(tmp_path / "heldout")
    dump.run_dump(_argv(directory, url, tokenizer_path, "--split", "heldout"))
    reader = store.StoreReader(url)
    assert (
        manifest_split(reader.manifest) == "heldout" and reader.schema.packing["split"] == "heldout"
    )
