"""End to end: text files → tokenizer → spine → teacher signal → store (DirectRunner, in process)."""

import os
import shutil

import numpy as np
import pipelines_testlib as lib
import pytest

import store
from pipelines import dump
from pipelines.errors import (
    EmptyInputError,
    InputError,
    OptionsError,
    StoreStateError,
    VocabMismatchError,
)
from store import layout as store_layout
from store import ledger, snapshot

HELDOUT = 0.1


@pytest.fixture(scope="module")
def dumped(corpus, tokenizer_path, teacher_path, tmp_path_factory):
    """One full dump with a held-out split; returns (argv, DumpResult, store url, heldout url)."""
    directory, _ = corpus
    out = tmp_path_factory.mktemp("dump")
    url, heldout_url = str(out / "store"), str(out / "heldout")
    argv = lib.dump_argv(
        os.path.join(directory, "*"),
        url,
        teacher_path,
        tokenizer_path,
        "--heldout-fraction",
        str(HELDOUT),
        "--heldout-store",
        heldout_url,
        "--docs-per-chunk",
        "7",
    )
    result = dump.run_dump(argv)
    return argv, result, url, heldout_url


def test_store_equals_bare_extraction(dumped, corpus, tokenizer_path, teacher_path, tmp_path):
    _, result, url, _ = dumped
    _, docs = corpus
    rows = lib.reference_rows(docs, tokenizer_path, HELDOUT)
    reader = store.StoreReader(url)
    assert reader.num_rows == len(rows) > 3 * lib.ROWS_PER_UNIT
    np.testing.assert_array_equal(
        reader.read(np.arange(len(rows)), fields=("tokens",))["tokens"], rows
    )
    # The non-Beam path (teacher_dump.extract_rows + write_unit) on the same rows
    # gives the same stored bytes, hence the same decoded arrays.
    bare_url = str(tmp_path / "bare")
    lib.bare_dump(bare_url, result.plan.schema, rows, teacher_path, result.plan.hidden_layers)
    lib.assert_stores_identical(url, bare_url)
    fields = ("tokens", "topk", f"hidden/{result.plan.hidden_layers[0]}")
    a = reader.read(np.arange(len(rows)), fields=fields)
    b = store.StoreReader(bare_url).read(np.arange(len(rows)), fields=fields)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_heldout_store(dumped, corpus, tokenizer_path):
    _, result, _, heldout_url = dumped
    _, docs = corpus
    rows = lib.reference_rows(docs, tokenizer_path, HELDOUT, split="heldout")
    reader = store.StoreReader(heldout_url)
    assert reader.schema.k == 0 and reader.schema.hidden_layers == ()
    assert reader.schema.packing["split"] == "heldout"
    assert reader.manifest["split"] == "heldout"  # what evaluate reads (issue 23)
    assert store.StoreReader(dumped[2]).manifest["split"] == "train"
    np.testing.assert_array_equal(
        reader.read(np.arange(len(rows)), fields=("tokens",))["tokens"], rows
    )


def test_manifest_records_provenance(dumped, tokenizer_path, teacher_path):
    _, result, url, _ = dumped
    schema = store.StoreReader(url).schema
    from trainer.model import model_io, tokenizer

    assert schema.tokenizer == tokenizer.tokenizer_info(tokenizer_path)
    _, _, metadata = model_io.load_model(teacher_path)
    assert schema.teacher["fingerprint"] == metadata["fingerprint"]
    assert (schema.teacher["num_layers"], schema.teacher["d_model"]) == (2, 32)
    assert schema.hidden_layers == (1,) and schema.hidden_dim == 32
    assert (schema.seq_len, schema.k, schema.rows_per_unit) == (
        lib.SEQ_LEN,
        lib.K,
        lib.ROWS_PER_UNIT,
    )
    assert schema.packing["rule"] == "noam" and schema.packing["final_partial_row"] == "dropped"
    assert schema.packing["heldout_fraction"] == HELDOUT


def test_counters(dumped, corpus):
    _, result, url, _ = dumped
    _, docs = corpus
    c = result.counters
    writer = store.open_writer(url)
    assert c["documents"] + c["heldout_documents"] == len(docs)
    assert c["units_committed"] == writer.num_units
    assert c["rows"] == writer.num_rows and c["tokens"] == writer.num_rows * lib.SEQ_LEN
    # exact profile, V<=65536: int32 tokens + (uint16 id + fp16 logprob) * K + fp16 hidden + fp32 rms
    per_token = 4 + 4 * lib.K + 2 * 32 + 4
    assert c["bytes_written"] == writer.num_rows * lib.SEQ_LEN * per_token
    assert c["heldout_units_committed"] >= 1


def test_dump_leaves_a_ledger_snapshot(dumped):
    """The launcher compacts both ledgers, so opening the store needs no listing of every unit."""
    _, _, url, heldout_url = dumped
    for u in (url, heldout_url):
        path = os.path.join(u, snapshot.KEY)
        assert os.path.isfile(path), f"no ledger snapshot at {path}"
        writer = store.open_writer(u)
        units, how = snapshot.committed_units(store_layout.open_kvstore(u), writer.num_units)
        assert how == "snapshot"
        assert units == set(writer.committed_units()) == set(range(writer.num_units))


def test_rerun_resumes_only_missing_units(dumped, tmp_path):
    argv, result, url, heldout_url = dumped
    before = lib.store_arrays(url)
    # Simulate a crash that lost two commits (and garbled one unit's rows).
    copy = str(tmp_path / "store")
    shutil.copytree(url, copy)
    kv = store_layout.open_kvstore(store_layout.normalize_url(copy))
    for unit in (1, 3):
        ledger.delete(kv, unit)
    # A crashed dump never reached its final ledger compaction: no snapshot either
    # (deleting records of a compacted store by hand is what `store repair` is for).
    ledger.delete_keys(kv, [snapshot.KEY])
    writer = store.open_writer(copy)
    start, stop = writer.unit_rows(3)
    rerun = list(argv)
    rerun[rerun.index("--store") + 1] = copy
    again = dump.run_dump(rerun)
    assert again.counters.get("units_committed") == 2
    assert again.counters["units_already_committed"] == writer.num_units - 2
    lib.assert_stores_identical(url, copy)
    # A rerun of a complete store writes nothing and changes nothing.
    noop = dump.run_dump(argv)
    assert noop.counters.get("units_committed", 0) == 0
    after = lib.store_arrays(url)
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)


def _run_cli(capsys, argv):
    rc = dump.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_cli_non_utf8_input(corpus, tokenizer_path, teacher_path, tmp_path, capsys):
    directory, _ = corpus
    shutil.copy(os.path.join(directory, "a.txt"), tmp_path / "a.txt")
    (tmp_path / "z.txt").write_bytes(b"good text\n\nbad \xff\xfe bytes\n")
    url = str(tmp_path / "store")
    rc, err = _run_cli(
        capsys, lib.dump_argv(str(tmp_path / "*.txt"), url, teacher_path, tokenizer_path)
    )
    assert rc == 2
    assert err.startswith("error: ") and "z.txt line 3 is not valid UTF-8" in err
    assert err.endswith("--decode-errors replace")
    assert not os.path.exists(url)  # failed before the store was created


def test_empty_input(tokenizer_path, teacher_path, tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   \n\n")
    (tmp_path / "empty.jsonl").write_text("")
    url = str(tmp_path / "store")
    argv = lib.dump_argv(str(tmp_path / "*"), url, teacher_path, tokenizer_path)
    with pytest.raises(EmptyInputError, match=r"gives 0 tokens.*fewer than one row"):
        dump.run_dump(argv)
    assert not os.path.exists(url)


def test_launcher_side_errors(
    corpus, tokenizer_path, teacher_path, wrong_vocab_teacher_path, tmp_path, capsys
):
    directory, _ = corpus
    glob = os.path.join(directory, "*")
    url = str(tmp_path / "store")
    cases = [
        (
            lib.dump_argv(glob, url, wrong_vocab_teacher_path, tokenizer_path),
            VocabMismatchError,
            r"tokenizer .* has 384 pieces but teacher .* has vocab_size=512",
        ),
        (
            lib.dump_argv(str(tmp_path / "nope*.txt"), url, teacher_path, tokenizer_path),
            InputError,
            r"matches no file",
        ),
        (
            lib.dump_argv(glob, url, teacher_path, tokenizer_path, "--heldout-fraction", "0.1"),
            OptionsError,
            r"--heldout-store",
        ),
        (
            lib.dump_argv(glob, url, teacher_path, tokenizer_path, "--hidden-layers", "3"),
            OptionsError,
            r"in \[1, 2\]",
        ),
        (
            lib.dump_argv(glob, url, teacher_path, str(tmp_path / "no.model")),
            ValueError,
            r"cannot read tokenizer model",
        ),
        (
            lib.dump_argv(glob, url, str(tmp_path / "no_teacher"), tokenizer_path),
            ValueError,
            r"no_teacher",
        ),
        (
            lib.dump_argv(glob, url, teacher_path, tokenizer_path, "--k", "999"),
            OptionsError,
            r"--k=999 exceeds the vocabulary",
        ),
    ]
    for argv, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            dump.build_pipeline(argv)
    (tmp_path / "fake.txt.gz").write_bytes(b"not gzip")
    rc, err = _run_cli(
        capsys, lib.dump_argv(str(tmp_path / "fake.txt.gz"), url, teacher_path, tokenizer_path)
    )
    assert rc == 2 and "cannot read input file" in err and "fake.txt.gz" in err
    rc, err = _run_cli(capsys, ["--store", url])
    assert rc == 2 and err == "error: --input is required; see `python -m pipelines.dump --help`"
    assert dump.main(["--help"]) == 0 and "--heldout-fraction" in capsys.readouterr().out
    assert not os.path.exists(url)


def test_store_from_another_dump_is_refused(dumped, corpus, tokenizer_path, teacher_path):
    _, _, url, _ = dumped
    directory, _ = corpus
    before = lib.store_arrays(url)
    argv = lib.dump_argv(os.path.join(directory, "*"), url, teacher_path, tokenizer_path)
    argv[argv.index("--k") + 1] = "4"
    with pytest.raises(StoreStateError, match=r"different dump.*new URL"):
        dump.run_dump(
            argv + ["--heldout-fraction", str(HELDOUT), "--heldout-store", url + "_other_heldout"]
        )
    after = lib.store_arrays(url)
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)
