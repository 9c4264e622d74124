"""Sampled teacher logits (sampled/*): round trips, pre-encoded writes, bad inputs, unchanged old stores."""

import hashlib
import json
import pathlib

import numpy as np
import pytest
from store_testlib import synth_unit, write_synth

from store import StoreInputError, StoreReader, StoreSchema, create_store, profiles, sampled
from store.verify import verify_store

# Digest of every file of a small store (root manifest without its "created" stamp). exact and
# compact_unpacked_ids were recorded with main's writer before the sampled family existed (compact then
# stored plain uint16 ids); compact was re-recorded when it began bit-packing ids (store/bitpack.py).
# A samples=0 store must stay byte-identical; updating a digest is legitimate only with a deliberate
# format change of that profile (say which in the commit).
GOLDEN_FILES = {
    "exact": "899fcda566b678f13f7e88cbcb59c89d6705766d9525d62e28434c47d678dd8e",
    "compact_unpacked_ids": "99ffaab45f9c1666e4bb1cba0af9ce9d8c4dac70a708da449842df087d2cee0b",
    "compact": "a6a1fdec4e953aac68694449598049ab36fe33ff42bb633c2b8863ceb05715f7",
}
# StoreSchema.fingerprint() of that schema (compact), recorded on main likewise.
GOLDEN_FINGERPRINT = "f0108d8c9dfc8c90d2ac6ac459397fc9e9d0f31074db2b74c056e7a57507b0fc"


def _golden_schema(profile, **kw):
    return StoreSchema(
        seq_len=16,
        k=8,
        vocab_size=300,
        hidden_layers=(2,),
        hidden_dim=32,
        profile=profile,
        rows_per_unit=4,
        tokenizer={"sha256": "tok-sha", "vocab_size": 300},
        packing={"rule": "noam"},
        **kw,
    )


def _store_digest(root: pathlib.Path) -> str:
    """Every file but the creation stamp and re-write tombstones (their names hold a random uuid).

    The manifest's ``num_rows`` and its checksummed copy ``ledger/manifest/zarr.json`` (store/metadata.py)
    came later than these digests and are left out, so every array, its metadata and every commit record
    are still compared with the bytes main's writer wrote then.
    """
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file() and not rel.startswith(("ledger/uncommitted/", "ledger/manifest/")):
            data = p.read_bytes()
            if rel == "zarr.json":
                node = json.loads(data)
                node["attributes"].pop("created")
                node["attributes"].pop("num_rows", None)
                data = json.dumps(node, sort_keys=True).encode()
            h.update(rel.encode() + b"|" + data)
    return h.hexdigest()


def _write(url, schema, num_rows=6, seed=7):
    return write_synth(url, schema, num_rows, seed)


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_stores_without_samples_are_byte_identical_to_before(tmp_path, profile):
    schema = _golden_schema(profile)
    assert "samples" not in schema.to_dict()
    if profile == "compact":
        assert schema.fingerprint() == GOLDEN_FINGERPRINT
    _write(tmp_path / "s", schema)
    assert _store_digest(tmp_path / "s") == GOLDEN_FILES[profile]


def test_samples_in_schema_and_manifest(tmp_path):
    schema = _golden_schema("exact", samples=12)
    assert schema.to_dict()["samples"] == 12 and StoreSchema.from_dict(schema.to_dict()) == schema
    assert schema.fingerprint() != _golden_schema("exact").fingerprint()
    assert StoreSchema.from_dict(_golden_schema("exact").to_dict()).samples == 0
    assert _golden_schema("exact", samples=np.int64(3)).to_dict()["samples"] == 3
    for bad in (-1, 256, 2.5, True):
        with pytest.raises(StoreInputError, match="samples=.*must be an integer in \\[0, 255\\]"):
            _golden_schema("exact", samples=bad)


@pytest.mark.parametrize("profile,K", [("exact", 8), ("compact", 8), ("exact", 0), ("compact", 0)])
def test_sampled_round_trip(tmp_path, make_schema, profile, K):
    S = 12
    schema = make_schema(profile, K=K, samples=S)
    w, data = _write(tmp_path / "s", schema, num_rows=6)
    r = StoreReader(tmp_path / "s")
    assert r.default_fields() == ("tokens",) + (("topk",) if K else ()) + ("sampled", "hidden/2")
    out = r.read(np.arange(6))
    want = {
        k: np.concatenate([data[0][k], data[1][k]])
        for k in ("sampled_ids", "sampled_counts", "sampled_logprobs")
    }
    assert (
        out["sampled_ids"].dtype == np.int32 and (out["sampled_ids"] == want["sampled_ids"]).all()
    )
    assert (
        out["sampled_counts"].dtype == np.uint8
        and (out["sampled_counts"] == want["sampled_counts"]).all()
    )
    assert (out["sampled_counts"].sum(-1) == S).all()
    lp, lp_want = out["sampled_logprobs"], want["sampled_logprobs"]
    assert lp.dtype == np.float32 and (np.isneginf(lp) == np.isneginf(lp_want)).all()
    fin = np.isfinite(lp_want)
    np.testing.assert_allclose(lp[fin], lp_want[fin], rtol=2**-10)  # float16 storage
    loader = r.read(
        [1, 4], fields=("sampled",), ids_dtype=r.stored_ids_dtype, logprobs_dtype=np.float16
    )
    assert set(loader) == {"sampled_ids", "sampled_counts", "sampled_logprobs"}
    assert (
        loader["sampled_ids"].dtype == np.uint16 and loader["sampled_logprobs"].dtype == np.float16
    )
    assert verify_store(tmp_path / "s")["ok"]
    names = r.stored_names(("sampled", "hidden/2"), hidden_normalized=True)
    assert (
        names[:3] == ["sampled/ids", "sampled/counts", "sampled/logprobs"]
        and "hidden_aux/2/rms" not in names
    )
    raw = r.read_stored([0, 1], names)
    assert raw["sampled/ids"].dtype == (np.uint16 if profile == "exact" else np.uint8)


def test_write_unit_encoded_matches_write_unit(tmp_path, make_schema):
    schema = make_schema("compact", samples=5)
    _write(tmp_path / "a", schema, num_rows=6)
    w = create_store(tmp_path / "b", schema, num_rows=6)
    rng = np.random.default_rng(7)
    profile = profiles.get_profile("compact")
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        d = synth_unit(rng, b - a, schema)
        encoded = {
            "tokens": d["tokens"],
            **profile.encode_topk(d["topk_ids"], d["topk_logprobs"], schema.vocab_size),
            **profile.encode_hidden(2, d["hidden"][2]),
        }
        encoded.update(
            sampled.encode(
                profile,
                d["sampled_ids"],
                d["sampled_counts"],
                d["sampled_logprobs"],
                schema.vocab_size,
            )
        )
        w.write_unit_encoded(u, encoded)
    files = lambda root: {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and str(p.relative_to(root)) != "zarr.json"
    }
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert verify_store(tmp_path / "b")["ok"]


def test_write_unit_encoded_refuses_wrong_arrays(tmp_path, make_schema):
    schema = make_schema("exact", samples=4)
    w = create_store(tmp_path / "s", schema, num_rows=4)
    profile = profiles.get_profile("exact")
    good = {s.name: np.zeros((4, *s.inner_shape), s.dtype) for s in profile.arrays(schema)}
    missing = {k: v for k, v in good.items() if k != "sampled/counts"}
    with pytest.raises(StoreInputError, match=r"missing \['sampled/counts'\] and extra \[\]"):
        w.write_unit_encoded(0, missing)
    with pytest.raises(StoreInputError, match=r"extra \['bogus'\]"):
        w.write_unit_encoded(0, dict(good, bogus=np.zeros(3)))
    with pytest.raises(
        StoreInputError, match=r"sampled/ids is int32\[4, 16, 4\], the store needs uint16"
    ):
        w.write_unit_encoded(0, dict(good, **{"sampled/ids": good["sampled/ids"].astype(np.int32)}))
    with pytest.raises(
        StoreInputError, match=r"tokens is int32\[3, 16\], the store needs int32\[4, 16\]"
    ):
        w.write_unit_encoded(0, dict(good, tokens=good["tokens"][:3]))
    assert not w.committed_units()


def _sampled_inputs(S=4):
    ids = np.array([[[3, 7, 0, 0], [1, 2, 5, 9]]], np.int32)  # [1, 2, 4]
    counts = np.array([[[3, 1, 0, 0], [1, 1, 1, 1]]], np.uint8)
    lp = np.where(counts > 0, -1.5, -np.inf).astype(np.float32)
    return ids, counts, lp


@pytest.mark.parametrize(
    "change,match",
    [
        (
            lambda i, c, l: (np.where(i == 9, 300, i), c, l),
            r"sampled ids outside \[0, vocab_size=300\)",
        ),
        (
            lambda i, c, l: (i, np.where(c == 3, 5, c), l),
            r"sampled counts outside \[0, samples=4\]",
        ),
        (
            lambda i, c, l: (i, np.where(c == 3, 2, c), l),
            r"counts must sum to samples=4 at every position; found sums \[3\]",
        ),
        (
            lambda i, c, l: (i[..., [2, 0, 1, 3]], c[..., [2, 0, 1, 3]], l[..., [2, 0, 1, 3]]),
            "empty slots .* must come last",
        ),
        (
            lambda i, c, l: (np.where((c == 0) & (i == 0), 4, i), c, l),
            "empty slots .* must hold id 0",
        ),
        (lambda i, c, l: (np.where(i == 2, 1, i), c, l), "distinct and ascending"),
        (lambda i, c, l: (i[..., [1, 0, 2, 3]], c[..., [1, 0, 2, 3]], l), "distinct and ascending"),
        (lambda i, c, l: (i, c, np.where(c == 0, 0.0, l)), "-inf in empty slots"),
        (lambda i, c, l: (i, c, np.where(c == 1, 0.5, l)), "finite log-probabilities"),
        (lambda i, c, l: (i, c, np.where(c == 1, np.nan, l)), "finite log-probabilities"),
    ],
)
def test_bad_sampled_inputs(tmp_path, make_schema, change, match):
    schema = make_schema("exact", T=2, K=0, layers=(), R=1, samples=4)
    w = create_store(tmp_path / "s", schema, num_rows=1)
    tokens = np.zeros((1, 2), np.int32)
    ids, counts, lp = _sampled_inputs()
    w.write_unit(
        0, tokens, sampled_ids=ids, sampled_counts=counts, sampled_logprobs=lp
    )  # the good case
    ids, counts, lp = change(ids, counts, lp)
    with pytest.raises(StoreInputError, match=match):
        w.write_unit(0, tokens, sampled_ids=ids, sampled_counts=counts, sampled_logprobs=lp)


def test_sampled_inputs_required_iff_samples(tmp_path, make_schema):
    schema = make_schema("exact", T=2, K=0, layers=(), R=1, samples=4)
    w = create_store(tmp_path / "s", schema, num_rows=1)
    tokens = np.zeros((1, 2), np.int32)
    with pytest.raises(
        StoreInputError,
        match="has samples=4: pass sampled_ids, sampled_counts and sampled_logprobs",
    ):
        w.write_unit(0, tokens)
    ids, counts, lp = _sampled_inputs()
    with pytest.raises(
        StoreInputError, match=r"sampled_counts has shape \(1, 2, 3\), expected \(1, 2, 4\)"
    ):
        w.write_unit(
            0, tokens, sampled_ids=ids, sampled_counts=counts[..., :3], sampled_logprobs=lp
        )
    with pytest.raises(
        StoreInputError, match="sampled_logprobs has dtype int32, expected floating"
    ):
        w.write_unit(0, tokens, sampled_ids=ids, sampled_counts=counts, sampled_logprobs=ids)
    w0 = create_store(tmp_path / "t", make_schema("exact", T=2, K=0, layers=(), R=1), num_rows=1)
    with pytest.raises(StoreInputError, match="has samples=0: pass sampled_ids=None"):
        w0.write_unit(0, tokens, sampled_ids=ids, sampled_counts=counts, sampled_logprobs=lp)
