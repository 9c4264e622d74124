"""`python -m store repair` then the same dump command: the bad unit is re-written byte-identically."""

import os
import pathlib
import shutil

import pipelines_testlib as lib
import pytest

from pipelines import dump
from store.cli import main as store_cli
from store.verify import verify_store


@pytest.mark.slow  # ~25 s (a full tiny dump); tests/store/test_store_repair.py is the fast representative
def test_flipped_byte_repair_and_same_dump_command_rewrites(
    corpus, tokenizer_path, teacher_path, tmp_path, capsys
):
    directory, _ = corpus
    url = str(tmp_path / "store")
    argv = lib.dump_argv(os.path.join(directory, "*"), url, teacher_path, tokenizer_path)
    dump.run_dump(argv)
    reference = str(tmp_path / "reference")
    shutil.copytree(url, reference)
    shard = pathlib.Path(url) / "topk" / "logprobs" / "c" / "1" / "0" / "0"
    blob = bytearray(shard.read_bytes())
    blob[11] ^= 0xFF
    shard.write_bytes(bytes(blob))
    assert store_cli(["verify", url]) == 1
    assert "fix: python -m store repair" in capsys.readouterr().out
    assert store_cli(["repair", url]) == 0
    assert "re-run the same dump command" in capsys.readouterr().out
    again = dump.run_dump(argv)
    assert again.counters.get("units_committed") == 1
    assert verify_store(url)["ok"]
    lib.assert_stores_identical(reference, url)
