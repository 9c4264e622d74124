"""The signal contract: a profile is a registry line, a codec one class with both halves.

Everything that names a stored array (writer, reader, verify, loader, device
encoder and decoder) takes the names from ``store.profiles.Profile.field_arrays``,
and a codec's class holds its numpy codec and its jnp twins side by side
(``encode_jnp`` / ``decode_jnp``; teacher_dump.encode and trainer.training.decode
only dispatch), so a profile made of known codecs needs nothing but its
``PROFILES`` line, and a new codec (here with an array no shipped codec has)
is its class plus its ``CODECS`` line. References: the store's own numpy
decode of the same bytes (``StoreReader.read``), and the numpy encoder for the
device encoder's bytes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_testlib as tl

from store import StoreInputError, StoreReader, StoreSchema, hidden_codecs, profiles
from store.hidden_codecs import aux_name, hidden_name
from store.layout import ArraySpec
from store.verify import verify_store
from teacher_dump import encode
from trainer.training import data, decode


def _check_round_trip(url, fields):
    """Loader batch (stored names) -> device decode == the store's numpy decode; verify is clean."""
    source = data.StoreSource(url, fields)
    rows = np.array([0, 5, 17, 30])
    batch = source.read_indices(rows)
    assert set(batch) == set(source.spec.names)
    got = jax.device_get(jax.jit(lambda b: decode.decode_batch(b, source.spec))(batch))
    want = StoreReader(url).read(rows, fields=fields, hidden_normalized=True)
    np.testing.assert_array_equal(got.topk.ids, want["topk_ids"])
    np.testing.assert_array_equal(got.topk.logprobs, want["topk_logprobs"])
    np.testing.assert_array_equal(got.hidden, want[f"hidden/{tl.LAYER}"])
    assert verify_store(url)["ok"]
    return batch


def _check_device_encoder(profile_name):
    """teacher_dump.encode writes the numpy encoder's bytes for the new profile."""
    prof = profiles.get_profile(profile_name)
    schema = StoreSchema(
        seq_len=8, k=4, vocab_size=tl.VOCAB, hidden_layers=(3,), hidden_dim=64, profile=profile_name
    )
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(tl.VOCAB, 4, replace=False) for _ in range(16)]).reshape(2, 8, 4)
    lp = -np.sort(rng.uniform(0, 9, (2, 8, 4)), -1).astype(np.float32)
    x = (rng.normal(size=(2, 8, 64)) * 40).astype(np.float32)
    signal = {
        "topk_ids": jnp.asarray(ids, jnp.int32),
        "topk_logprobs": jnp.asarray(lp),
        "hidden": {3: jnp.asarray(x)},
    }
    got = encode.host_arrays(jax.jit(lambda s: encode.encode_signal(s, schema))(signal))
    want = {**prof.encode_topk(ids, lp, tl.VOCAB), **prof.encode_hidden(3, x)}
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_profile_of_known_codecs_is_one_registry_line(tmp_path, monkeypatch):
    # float16 top-k with lean activations: no shipped profile pairs them.
    monkeypatch.setitem(
        profiles.PROFILES,
        "exact_lean",
        profiles.Profile(
            "exact_lean",
            topk="float16",
            hidden="lean",
            packs_ids=False,
            side_zstd=False,
            sampled_zstd=False,
        ),
    )
    url = tl.make_store(tmp_path / "s", num_rows=32, profile="exact_lean")
    batch = _check_round_trip(url, ("tokens", "topk", f"hidden/{tl.LAYER}"))
    assert (
        batch["topk/logprobs"].dtype == np.float16
        and batch[hidden_name(tl.LAYER)].dtype == np.uint8
    )
    _check_device_encoder("exact_lean")


class _Float16WithPeak(hidden_codecs.Float16Hidden):
    """A new codec with a new array, in one class: float16 x/rms(x) plus the per-token peak |y|.

    Its numpy and jnp encoders sit side by side; decode (numpy and jnp) is
    inherited, as the peak is not needed to decode.
    """

    name = "float16_peak"

    def specs(self, layer, T, D):
        peak = ArraySpec(aux_name(layer, "peak"), (T,), "float16", ("pos",))
        return super().specs(layer, T, D) + [peak]

    def encode(self, layer, x):
        out = super().encode(layer, x)
        out[aux_name(layer, "peak")] = np.abs(out[hidden_name(layer)]).max(-1)
        return out

    def encode_jnp(self, ops, layer, x):
        out = super().encode_jnp(ops, layer, x)
        out[aux_name(layer, "peak")] = ops.jnp.abs(out[hidden_name(layer)]).max(-1)
        return out

    def describe(self, schema):
        return {
            **super().describe(schema),
            "hidden_aux/<l>/peak": "float16 per-token max |hidden/<l>|",
        }


def test_a_new_codec_with_a_new_array_is_one_class_and_its_registry_lines(tmp_path, monkeypatch):
    # The whole change: the class above, its CODECS line and the profile's PROFILES line. Nothing in
    # the writer, reader, verify, loader, device encoder (teacher_dump.encode) or decoder
    # (trainer.training.decode) names it.
    monkeypatch.setitem(hidden_codecs.CODECS, "float16_peak", _Float16WithPeak())
    peak = profiles.Profile(
        "peak",
        topk="float16",
        hidden="float16_peak",
        packs_ids=False,
        side_zstd=False,
        sampled_zstd=False,
    )
    monkeypatch.setitem(profiles.PROFILES, "peak", peak)
    url = tl.make_store(tmp_path / "s", num_rows=32, profile="peak")
    batch = _check_round_trip(url, ("tokens", "topk", f"hidden/{tl.LAYER}"))
    # The new array travels to the step under its one name (a normalized read leaves out the RMS only).
    peak = batch[aux_name(tl.LAYER, "peak")]
    np.testing.assert_array_equal(peak, np.abs(batch[hidden_name(tl.LAYER)]).max(-1))
    assert aux_name(tl.LAYER, "rms") not in batch
    _check_device_encoder("peak")


class _NumpyOnly:
    """A codec with its numpy half only (no encode_jnp / decode_jnp)."""

    name = "float16_numpy_only"

    def __getattr__(self, attr):
        if attr.endswith("_jnp"):
            raise AttributeError(attr)
        return getattr(hidden_codecs.CODECS["float16_rms"], attr)


def test_a_codec_without_device_twins_is_refused_by_name(monkeypatch):
    monkeypatch.setitem(hidden_codecs.CODECS, "float16_numpy_only", _NumpyOnly())
    monkeypatch.setitem(
        profiles.PROFILES,
        "numpy_only",
        profiles.Profile(
            "numpy_only",
            topk="float16",
            hidden="float16_numpy_only",
            packs_ids=False,
            side_zstd=False,
            sampled_zstd=False,
        ),
    )
    with pytest.raises(ValueError, match="float16_numpy_only hidden codec has no device decoder"):
        decode.Encoding(profile="numpy_only")
    schema = StoreSchema(
        seq_len=8, k=4, vocab_size=tl.VOCAB, hidden_layers=(3,), hidden_dim=64, profile="numpy_only"
    )
    with pytest.raises(
        StoreInputError, match="float16_numpy_only hidden codec has no device encoder"
    ):
        encode.encode_signal({"topk_ids": None, "topk_logprobs": None, "hidden": {}}, schema)
