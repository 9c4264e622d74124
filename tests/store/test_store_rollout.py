"""Rollout arrays (loss_mask, token_logprob): schema and format version, round trips, the all-ones
default of older stores, zarr-python decode, bad inputs, verify / stats / inspect."""

import json

import numpy as np
import pytest
import zarr_decode
from store_testlib import synth_unit

from store import (
    SchemaMismatchError,
    StoreInputError,
    StoreReader,
    StoreSchema,
    create_store,
    metadata,
    rollout,
)
from store import cli as store_cli
from store.inspection import inspect_store
from store.schema import schema_from_manifest
from store.stats import store_stats
from store.verify import verify_store


def _rollout_unit(rng, rows, T):
    """A mask of prompt-then-completion rows (some all-prompt padding) and log-probs, last position 0."""
    start = rng.integers(1, T, rows)
    mask = (np.arange(T)[None] >= start[:, None]).astype(np.uint8)
    mask[0, :] = 0  # a padding row
    lp = (-rng.exponential(2.0, (rows, T))).astype(np.float32)
    lp[:, -1] = 0
    return mask, lp


def _write(url, schema, num_rows=6, seed=3):
    w = create_store(url, schema, num_rows=num_rows)
    rng = np.random.default_rng(seed)
    data = {}
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        d = synth_unit(rng, b - a, schema)
        mask, lp = _rollout_unit(rng, b - a, schema.seq_len)
        if schema.loss_mask:
            d["loss_mask"] = mask
        if schema.token_logprob:
            d["token_logprob"] = lp
        w.write_unit(u, **d)
        data[u] = d
    return w, data


def _cat(data, key):
    return np.concatenate([data[u][key] for u in sorted(data)])


def test_schema_fields_and_format_version(make_schema):
    plain = make_schema("exact")
    assert plain.format_version == 1
    assert "loss_mask" not in plain.to_dict() and "token_logprob" not in plain.to_dict()
    for kw in (
        {"loss_mask": True},
        {"token_logprob": True},
        {"loss_mask": True, "token_logprob": True},
    ):
        s = make_schema("exact", **kw)
        assert s.format_version == rollout.VERSION == 2
        assert StoreSchema.from_dict(s.to_dict()) == s
        assert s.fingerprint() != plain.fingerprint()
    with pytest.raises(StoreInputError, match="loss_mask=1 must be True or False"):
        make_schema("exact", loss_mask=1)


@pytest.mark.parametrize("profile", ["exact", "compact", "lean"])
def test_round_trip_with_topk_and_hidden(tmp_path, make_schema, profile):
    schema = make_schema(profile, loss_mask=True, token_logprob=True)
    _, data = _write(tmp_path / "s", schema)
    r = StoreReader(tmp_path / "s")
    assert r.manifest["format_version"] == 2
    assert r.default_fields() == ("tokens", "loss_mask", "token_logprob", "topk", "hidden/2")
    out = r.read(np.arange(6))
    assert out["loss_mask"].dtype == np.uint8 and out["token_logprob"].dtype == np.float32
    np.testing.assert_array_equal(out["loss_mask"], _cat(data, "loss_mask"))
    # float32 storage: exact.
    np.testing.assert_array_equal(out["token_logprob"], _cat(data, "token_logprob"))
    np.testing.assert_array_equal(out["tokens"], _cat(data, "tokens"))
    # Shuffled, repeated rows (the loader's reads).
    rows = np.array([5, 0, 5, 2])
    again = r.read(rows, fields=("loss_mask", "token_logprob"))
    np.testing.assert_array_equal(again["loss_mask"], _cat(data, "loss_mask")[rows])
    assert r.stored_names(("loss_mask", "token_logprob")) == ["loss_mask", "token_logprob"]
    enc = r.manifest["encodings"]
    assert "completion token" in enc["loss_mask"] and "realized next token" in enc["token_logprob"]
    assert verify_store(tmp_path / "s")["ok"]


def test_a_store_without_a_mask_reads_as_all_ones(tmp_path, make_schema):
    _, data = _write(tmp_path / "s", make_schema("exact"))
    r = StoreReader(tmp_path / "s")
    assert r.manifest["format_version"] == 1 and "loss_mask" not in r.default_fields()
    assert r.stored_names(("tokens", "loss_mask")) == ["tokens"]
    out = r.read([4, 1], fields=("tokens", "loss_mask"))
    assert out["loss_mask"].dtype == np.uint8 and out["loss_mask"].shape == (2, 16)
    assert (out["loss_mask"] == 1).all()
    np.testing.assert_array_equal(zarr_decode.loss_mask(zarr_decode.open_group(tmp_path / "s")), 1)
    with pytest.raises(StoreInputError, match="unknown field 'token_logprob'"):
        r.read([0], fields=("token_logprob",))


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_zarr_python_decodes_by_the_manifest(tmp_path, make_schema, profile):
    schema = make_schema(profile, K=0, layers=(), loss_mask=True, token_logprob=True, samples=3)
    _, data = _write(tmp_path / "s", schema)
    g = zarr_decode.open_group(tmp_path / "s")
    np.testing.assert_array_equal(zarr_decode.loss_mask(g), _cat(data, "loss_mask"))
    np.testing.assert_array_equal(zarr_decode.token_logprob(g), _cat(data, "token_logprob"))
    ours = StoreReader(tmp_path / "s").read(np.arange(6))
    np.testing.assert_array_equal(zarr_decode.sampled(g)[1], ours["sampled_counts"])


def test_mask_only_and_logprob_only_stores(tmp_path, make_schema):
    for kw in ({"loss_mask": True}, {"token_logprob": True}):
        url = tmp_path / next(iter(kw))
        _, data = _write(url, make_schema("exact", K=0, layers=(), **kw))
        r = StoreReader(url)
        out = r.read(np.arange(6), fields=("loss_mask",))
        want = _cat(data, "loss_mask") if "loss_mask" in kw else 1
        np.testing.assert_array_equal(out["loss_mask"], want)
        assert verify_store(url)["ok"]


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda d: d.pop("loss_mask"), "this store has loss_mask: pass loss_mask"),
        (lambda d: d.pop("token_logprob"), "this store has token_logprob: pass token_logprob"),
        (lambda d: d.update(loss_mask=d["loss_mask"] * 2), "loss_mask values must be 0"),
        (lambda d: d.update(loss_mask=d["loss_mask"][:, :-1]), "loss_mask has shape"),
        (lambda d: d.update(loss_mask=d["loss_mask"].astype(np.float32)), "loss_mask has dtype"),
        (lambda d: d["token_logprob"].__setitem__((0, 0), 0.5), "finite log-probabilities"),
        (lambda d: d["token_logprob"].__setitem__((0, 1), np.nan), "finite log-probabilities"),
        (lambda d: d["token_logprob"].__setitem__((0, -1), -1.0), "last position must be 0"),
    ],
)
def test_bad_inputs_are_refused(tmp_path, make_schema, change, match):
    schema = make_schema("exact", K=0, layers=(), loss_mask=True, token_logprob=True)
    w = create_store(tmp_path / "s", schema, num_rows=4)
    mask, lp = _rollout_unit(np.random.default_rng(0), 4, 16)
    d = {"tokens": np.zeros((4, 16), np.int32), "loss_mask": mask, "token_logprob": lp}
    change(d)
    with pytest.raises(StoreInputError, match=match):
        w.write_unit(0, **d)
    assert not w.is_committed(0)


def test_arrays_for_a_store_without_them_are_refused(tmp_path, make_schema):
    w = create_store(tmp_path / "s", make_schema("exact", K=0, layers=()), num_rows=4)
    with pytest.raises(StoreInputError, match="this store has no loss_mask: pass loss_mask=None"):
        w.write_unit(0, tokens=np.zeros((4, 16), np.int32), loss_mask=np.ones((4, 16), np.uint8))


def test_bool_mask_is_accepted(tmp_path, make_schema):
    w = create_store(tmp_path / "s", make_schema("exact", K=0, layers=(), loss_mask=True), 4)
    mask = np.zeros((4, 16), bool)
    mask[:, 9:] = True
    w.write_unit(0, tokens=np.zeros((4, 16), np.int32), loss_mask=mask)
    np.testing.assert_array_equal(StoreReader(tmp_path / "s").read([0, 3])["loss_mask"], mask[:2])


def test_pre_encoded_writes_are_checked_and_verify_finds_bad_values(tmp_path, make_schema):
    schema = make_schema("exact", K=0, layers=(), loss_mask=True, token_logprob=True)
    w = create_store(tmp_path / "s", schema, num_rows=4)
    mask, lp = _rollout_unit(np.random.default_rng(1), 4, 16)
    arrays = {"tokens": np.zeros((4, 16), np.int32), "loss_mask": mask, "token_logprob": lp}
    with pytest.raises(StoreInputError, match="loss_mask values must be 0"):
        w.write_unit_encoded(0, dict(arrays, loss_mask=mask + 1))
    lp_bad = lp.copy()
    lp_bad[2, -1] = -3.0  # not checked on the encoded path: verify finds it
    w.write_unit_encoded(0, dict(arrays, token_logprob=lp_bad))
    report = verify_store(tmp_path / "s")
    assert not report["ok"]
    [bad] = report["bad_units"]
    assert bad["status"] == "invalid" and "last position must be 0" in bad["detail"]


def test_a_rollout_manifest_stamped_version_1_is_refused(make_schema):
    schema = make_schema("exact", loss_mask=True)
    manifest = {
        "store_format": "distill-teacher-store",
        "format_version": 1,
        "schema": schema.to_dict(),
        "schema_sha256": schema.fingerprint(),
    }
    with pytest.raises(SchemaMismatchError, match="format_version=1 but its schema needs 2"):
        schema_from_manifest(manifest, "file:///x/")
    _, _, why = metadata._parse_root(metadata.node_bytes(manifest), "file:///x/")
    assert why == "has format_version=1, its schema needs 2"
    newer = dict(manifest, format_version=3)
    with pytest.raises(SchemaMismatchError, match="this package reads <= 2"):
        schema_from_manifest(newer, "file:///x/")


def test_stats_inspect_and_cli(tmp_path, make_schema, capsys):
    schema = make_schema("exact", K=0, layers=(), T=64, R=8, loss_mask=True, token_logprob=True)
    _, data = _write(tmp_path / "s", schema, num_rows=16)
    st = store_stats(tmp_path / "s", sample_rows=16)
    mask, lp = _cat(data, "loss_mask"), _cat(data, "token_logprob")
    assert st["loss_mask"]["completion_fraction"] == pytest.approx(mask.mean())
    assert st["token_logprob"]["all"]["mean"] == pytest.approx(lp[:, :-1].mean(), rel=1e-6)
    want = lp[:, :-1][mask[:, 1:] == 1].astype(np.float64).mean()  # position t scores token t+1
    assert st["token_logprob"]["completion"]["mean"] == pytest.approx(want, rel=1e-6)
    info = inspect_store(tmp_path / "s")
    per_array = {a["name"]: a for a in info["arrays"]}
    assert per_array["loss_mask"]["dtype"] == "uint8" and "zstd" in per_array["loss_mask"]["codecs"]
    assert per_array["token_logprob"]["dtype"] == "float32"
    assert store_cli.main(["inspect", str(tmp_path / "s")]) == 0
    assert "loss_mask=stored  token_logprob=yes" in capsys.readouterr().out
    assert store_cli.main(["stats", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "loss_mask: completion tokens" in text and "token_logprob (completion positions)" in text
    assert store_cli.main(["stats", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss_mask"]["completion_fraction"] > 0
