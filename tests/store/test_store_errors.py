"""Bad input gives one clear StoreError (a ValueError) naming problem and fix."""

import dataclasses
import json

import numpy as np
import pytest
from store_testlib import synth_unit

from store import (
    IncompleteStoreError,
    SchemaMismatchError,
    StoreInputError,
    StoreNotFoundError,
    StoreReader,
    StoreSchema,
    create_store,
    open_writer,
)


def test_errors_are_value_errors():
    assert issubclass(StoreNotFoundError, ValueError) and issubclass(StoreInputError, ValueError)


def test_missing_path(tmp_path):
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        StoreReader(tmp_path / "nope")
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        open_writer(tmp_path / "nope")


def test_empty_dir_and_not_a_store(tmp_path, make_schema):
    with pytest.raises(StoreNotFoundError, match="no zarr.json"):
        StoreReader(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group"})
    )
    with pytest.raises(StoreNotFoundError, match="not a teacher-signal store"):
        StoreReader(tmp_path / "other")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(StoreNotFoundError, match="non-empty directory"):
        create_store(tmp_path / "junk", make_schema(), num_rows=4)


def test_bad_url():
    with pytest.raises(StoreNotFoundError, match="unsupported store URL"):
        StoreReader("ftp://host/x")


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(seq_len=32), "seq_len"),
        (dict(profile="compact"), "profile"),
        (
            dict(
                teacher={
                    "name": "tiny",
                    "fingerprint": "fp-2",
                    "num_layers": 4,
                    "d_model": 32,
                    "config": {},
                }
            ),
            "teacher.fingerprint",
        ),
    ],
)
def test_reopen_with_different_schema(tmp_path, make_schema, change, field):
    schema = make_schema()
    create_store(tmp_path / "s", schema, num_rows=8)
    other = dataclasses.replace(schema, **change)
    with pytest.raises(SchemaMismatchError, match=f"has {field}=.*write to a new store"):
        create_store(tmp_path / "s", other, num_rows=8)


def test_reopen_with_other_row_count(tmp_path, make_schema):
    create_store(tmp_path / "s", make_schema(), num_rows=8)
    with pytest.raises(SchemaMismatchError, match="num_rows=8.*resize"):
        create_store(tmp_path / "s", make_schema(), num_rows=12)


def test_bad_schema():
    with pytest.raises(StoreInputError, match="unknown precision profile"):
        StoreSchema(seq_len=4, k=2, vocab_size=10, profile="tiny")
    with pytest.raises(StoreInputError, match="hidden_layers"):
        StoreSchema(seq_len=4, k=2, vocab_size=10, hidden_layers=(1,), hidden_dim=0)
    with pytest.raises(StoreInputError, match="k=20"):
        StoreSchema(seq_len=4, k=20, vocab_size=10)


def test_write_unit_bad_inputs(tmp_path, make_schema):
    schema = make_schema()
    w = create_store(tmp_path / "s", schema, num_rows=8)
    good = synth_unit(np.random.default_rng(0), 4, schema)

    def attempt(match, unit=0, **override):
        kw = dict(good, **override)
        with pytest.raises(StoreInputError, match=match):
            w.write_unit(unit, **kw)

    attempt("unit 5 out of range", unit=5)
    attempt("tokens has dtype float", tokens=good["tokens"].astype(np.float32))
    attempt(r"tokens has shape \(3, 16\)", tokens=good["tokens"][:3])
    attempt("tokens must be in", tokens=good["tokens"] + 1000)
    attempt("pass topk_ids and topk_logprobs", topk_ids=None)
    attempt("topk_ids has shape", topk_ids=good["topk_ids"][..., :4])
    attempt("topk_ids must be in", topk_ids=good["topk_ids"] + 300)
    attempt("sorted descending", topk_logprobs=good["topk_logprobs"][..., ::-1].copy())
    attempt("not raw logits", topk_logprobs=good["topk_logprobs"] + 5)
    attempt("exactly the layers", hidden={3: good["hidden"][2]})
    attempt(r"hidden\[2\] has dtype int", hidden={2: good["hidden"][2].astype(np.int32)})
    nan = good["hidden"][2].copy()
    nan[0, 0, 0] = np.nan
    attempt("NaN", hidden={2: nan})
    assert w.committed_units() == set()


def test_partial_store_refused_unless_allowed(tmp_path, make_schema):
    schema = make_schema()
    w = create_store(tmp_path / "s", schema, num_rows=8)
    w.write_unit(1, **synth_unit(np.random.default_rng(0), 4, schema))
    with pytest.raises(
        IncompleteStoreError, match="1 of 2 work units uncommitted.*allow_partial=True"
    ):
        StoreReader(tmp_path / "s")
    r = StoreReader(tmp_path / "s", allow_partial=True)
    assert r.committed_rows().tolist() == [4, 5, 6, 7]
    with pytest.raises(IncompleteStoreError, match="uncommitted work units \\[0\\]"):
        r.read([0])
    r.read([4])


def test_read_bad_rows_and_fields(filled_store):
    url, schema, _ = filled_store("exact", num_rows=8)
    r = StoreReader(url)
    with pytest.raises(StoreInputError, match=r"row indices must be in \[0, 8\)"):
        r.read([8])
    with pytest.raises(StoreInputError, match="1-D sequence"):
        r.read([[1]])
    with pytest.raises(StoreInputError, match="unknown field 'hidden/7'"):
        r.read([1], fields=("hidden/7",))


def test_require(filled_store):
    url, schema, _ = filled_store("exact", num_rows=4)
    r = StoreReader(url)
    r.require(
        seq_len=16,
        k=8,
        vocab_size=300,
        tokenizer_sha256="tok-sha",
        hidden_layers=(2,),
        hidden_dim=32,
        samples=0,
    )
    for kw, field in [
        (dict(samples=12), "samples=0 but 12 was required"),
        (dict(seq_len=32), "seq_len"),
        (dict(k=4), "k"),
        (dict(vocab_size=32000), "vocab_size"),
        (dict(tokenizer_sha256="x"), "tokenizer_sha256"),
        (dict(hidden_dim=64), "hidden_dim"),
        (dict(hidden_layers=(2, 3)), "hidden_layers"),
    ]:
        with pytest.raises(SchemaMismatchError, match=field):
            r.require(**kw)
