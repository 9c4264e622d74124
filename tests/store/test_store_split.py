"""The manifest's "split" (issue 23 §1): written when given, "unknown" for stores that predate it."""

import pytest

from store import StoreReader, cli, create_store, errors
from store.schema import build_manifest, manifest_split


def test_split_is_recorded_shown_and_old_stores_read_unknown(tmp_path, make_schema, capsys):
    for split in ("heldout", "train", None):
        url = str(tmp_path / f"s_{split}")
        create_store(url, make_schema(), num_rows=4, split=split)
        assert manifest_split(StoreReader(url, allow_partial=True).manifest) == (split or "unknown")
        assert cli.main(["inspect", url]) == 0
        assert f"split={split or 'unknown'}" in capsys.readouterr().out.splitlines()[0]
    with pytest.raises(errors.StoreInputError, match="split='test' is not one of"):
        build_manifest(make_schema(), {}, "test")
