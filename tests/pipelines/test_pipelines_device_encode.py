"""`python -m pipelines.dump --profile compact` encodes on the device (teacher_dump.encode): the store it
writes is byte-identical to the host path (extract_rows + StoreWriter.write_unit's numpy encoder), and a
resume after lost commits rewrites the same bytes."""

import os
import shutil

import numpy as np
import pipelines_testlib as lib
import pytest

import store
from pipelines import dump, teacher_handler, unit_signal
from store import layout as store_layout
from store import ledger, snapshot


@pytest.fixture(scope="module")
def compact_dump(corpus, tokenizer_path, teacher_path, tmp_path_factory):
    directory, _ = corpus
    url = str(tmp_path_factory.mktemp("compact") / "store")
    argv = lib.dump_argv(
        os.path.join(directory, "*"),
        url,
        teacher_path,
        tokenizer_path,
        "--profile",
        "compact",
        "--samples",
        "3",
    )
    return argv, dump.run_dump(argv), url


def test_device_encoded_store_equals_the_host_encoded_one(
    compact_dump, corpus, tokenizer_path, teacher_path, tmp_path
):
    _, result, url = compact_dump
    assert result.plan.schema.profile == "compact"
    rows = lib.reference_rows(corpus[1], tokenizer_path)
    bare_url = str(tmp_path / "bare")
    lib.bare_dump(bare_url, result.plan.schema, rows, teacher_path, result.plan.hidden_layers)
    lib.assert_stores_identical(url, bare_url)


def test_resume_rewrites_the_same_bytes(compact_dump, tmp_path):
    argv, _, url = compact_dump
    copy = str(tmp_path / "store")
    shutil.copytree(url, copy)
    kv = store_layout.open_kvstore(store_layout.normalize_url(copy))
    ledger.delete(kv, 1)
    ledger.delete_keys(kv, [snapshot.KEY])
    argv = list(argv)
    argv[argv.index("--store") + 1] = copy
    dump.run_dump(argv)
    lib.assert_stores_identical(url, copy)


@pytest.mark.parametrize("manifest", [None, {"encodings": {}}], ids=["new", "before-id-packing"])
def test_the_handler_hands_the_writer_encoded_arrays(teacher_path, manifest):
    # What the dump's RunInference step emits: the compact store's arrays, not the float32 signal
    # (a store written before ids were bit-packed resumes with plain ids: dump._store_profile).
    schema = store.StoreSchema(
        seq_len=lib.SEQ_LEN,
        k=lib.K,
        vocab_size=lib.VOCAB,
        hidden_layers=(1,),
        hidden_dim=32,
        profile="compact",
        rows_per_unit=lib.ROWS_PER_UNIT,
    )
    profile = None if manifest is None else store.profiles.for_store(schema, manifest)
    handler = teacher_handler.TeacherModelHandler(
        teacher_path,
        k=lib.K,
        layers=(1,),
        batch_size=lib.BATCH,
        encode_for=schema,
        encode_profile=profile,
    )
    tokens = np.random.default_rng(0).integers(
        0, lib.VOCAB, (lib.ROWS_PER_UNIT, lib.SEQ_LEN), dtype=np.int32
    )
    [(unit, _, signal)] = handler.run_inference([(3, tokens)], handler.load_model())
    assert unit == 3 and isinstance(signal, unit_signal.DeviceEncoded)
    specs = {
        s.name: s
        for s in (profile or store.profiles.get_profile("compact")).arrays(schema)
        if s.name != "tokens"
    }
    assert {n: (a.dtype.name, a.shape[1:]) for n, a in signal.arrays.items()} == {
        n: (s.dtype, s.inner_shape) for n, s in specs.items()
    }
