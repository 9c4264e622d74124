"""The top-k family's codecs: how a profile stores ``topk/ids`` and ``topk/logprobs``.

A codec holds its array specs, its numpy encoder and decoder, their jnp twins
and its manifest description side by side; a profile (store/profiles.py)
picks one by name. The twins take what JAX they need as an argument, so this
package never imports it: ``encode_jnp(ops, ...)`` gets
``teacher_dump.encode_ops`` (``ops.jnp`` is jax.numpy, ``ops.divide`` & co.
numpy's float arithmetic bit for bit), and writes the numpy encoder's bytes;
``decode_jnp(jnp, ...)`` gets jax.numpy and gives the numpy decoder's values
bit for bit (the train step's decode, trainer.training.decode). Ids are
stored as the profile stores every id array (``Profile.ids_spec``:
bit-packed or uint16/int32), so the profile is passed in; the train step
decodes them by the manifest's ``ids_bits`` (0: unpacked).

``float16`` (exact):
  * ``topk/ids``       uint16/int32, or packed              [N,T,K]
  * ``topk/logprobs``  float16                               [N,T,K]

``uint8_companded`` (compact, lean):
  * ``topk/ids``            as above, zstd                   [N,T,K]
  * ``topk/logprobs``       uint8 code, zstd                 [N,T,K]
  * ``topk/top_logprob``    float32 top-1 log-prob           [N,T]
      lp = top - LP_RANGE * (code / 254)**2, code 255 = -inf.
      Square-root companding spends the codes where the probability mass
      is (near the top-1), which is what the KL to the teacher weighs.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from store import bitpack
from store.layout import ArraySpec

if TYPE_CHECKING:  # profiles imports this module
    from store.profiles import Profile
    from store.schema import StoreSchema

IDS = "topk/ids"
LOGPROBS = "topk/logprobs"
TOP_LOGPROB = "topk/top_logprob"
LP_RANGE = 32.0  # nats below the top-1 covered by the uint8 log-prob code
LP_NEG_INF_CODE = 255
_DROPPED = "vocabulary id; slots dropped by top-p hold id 0"


def _describe_ids(profile: Profile, V: int) -> str:
    return (
        profile.describe_ids(V, "slots dropped by top-p hold id 0")
        if profile.packs_ids
        else _DROPPED
    )


class Float16Topk:
    """float16 log-probs (exact): readable and decodable with plain numpy."""

    name = "float16"

    def specs(self, profile: Profile, T: int, K: int, V: int) -> list[ArraySpec]:
        return [
            profile.ids_spec(IDS, T, K, V, "k"),
            ArraySpec(LOGPROBS, (T, K), "float16", ("pos", "k")),
        ]

    def encode(
        self, profile: Profile, ids_RxTxK: np.ndarray, logprobs_RxTxK: np.ndarray, V: int
    ) -> dict[str, np.ndarray]:
        return {
            IDS: profile.encode_ids(ids_RxTxK, V),
            LOGPROBS: np.minimum(logprobs_RxTxK, 0).astype(np.float16),
        }

    def decode(
        self,
        profile: Profile,
        stored: dict[str, np.ndarray],
        ids_dtype: npt.DTypeLike,
        logprobs_dtype: npt.DTypeLike,
        V: int | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        lp = stored[LOGPROBS]
        return (
            profile.decode_ids(stored[IDS], lp.shape[-1], V, ids_dtype),
            lp.astype(logprobs_dtype, copy=False),
        )

    def describe(self, profile: Profile, schema: StoreSchema) -> dict[str, str]:
        return {
            IDS: _describe_ids(profile, schema.vocab_size),
            LOGPROBS: "float16 log-prob at tau=1, sorted descending; -inf = dropped slot",
        }

    def encode_jnp(
        self, ops: ModuleType, profile: Profile, ids_XxK: Any, logprobs_XxK: Any, V: int
    ) -> dict[str, Any]:
        jnp = ops.jnp
        return {
            IDS: profile.encode_ids_jnp(jnp, ids_XxK, V),
            LOGPROBS: jnp.minimum(logprobs_XxK.astype(jnp.float32), 0).astype(jnp.float16),
        }

    def decode_jnp(
        self, jnp: ModuleType, stored: dict[str, Any], k: int, ids_bits: int
    ) -> tuple[Any, Any]:
        """(int32 ids, float32 log-probs) [..., K]."""
        ids = bitpack.stored_ids_jnp(jnp, stored[IDS], k, ids_bits)
        return ids, stored[LOGPROBS].astype(jnp.float32)


class CompandedTopk:
    """uint8 square-root companded log-probs below a float32 top-1 (compact, lean)."""

    name = "uint8_companded"

    def specs(self, profile: Profile, T: int, K: int, V: int) -> list[ArraySpec]:
        return [
            profile.ids_spec(IDS, T, K, V, "k"),
            ArraySpec(LOGPROBS, (T, K), "uint8", ("pos", "k"), zstd=True),
            ArraySpec(TOP_LOGPROB, (T,), "float32", ("pos",)),
        ]

    def encode(
        self, profile: Profile, ids_RxTxK: np.ndarray, logprobs_RxTxK: np.ndarray, V: int
    ) -> dict[str, np.ndarray]:
        lp = np.minimum(logprobs_RxTxK, 0).astype(np.float32)
        top = lp[..., 0]
        finite = np.isfinite(lp) & np.isfinite(top)[..., None]
        delta = np.where(finite, top[..., None] - lp, 0.0)
        code = np.rint(254.0 * np.sqrt(np.clip(delta, 0.0, LP_RANGE) / LP_RANGE))
        code = np.where(finite, code, LP_NEG_INF_CODE).astype(np.uint8)
        return {
            IDS: profile.encode_ids(ids_RxTxK, V),
            LOGPROBS: code,
            TOP_LOGPROB: np.where(np.isfinite(top), top, -np.inf).astype(np.float32),
        }

    def decode(
        self,
        profile: Profile,
        stored: dict[str, np.ndarray],
        ids_dtype: npt.DTypeLike,
        logprobs_dtype: npt.DTypeLike,
        V: int | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        code = stored[LOGPROBS]
        top = stored[TOP_LOGPROB]
        frac = code.astype(np.float32) * np.float32(1.0 / 254.0)
        lp = top[..., None] - np.float32(LP_RANGE) * frac * frac
        lp[code == LP_NEG_INF_CODE] = -np.inf
        ids = profile.decode_ids(stored[IDS], code.shape[-1], V, ids_dtype)
        return ids, lp.astype(logprobs_dtype, copy=False)

    def describe(self, profile: Profile, schema: StoreSchema) -> dict[str, str]:
        return {
            IDS: _describe_ids(profile, schema.vocab_size),
            TOP_LOGPROB: "float32 top-1 log-prob at tau=1",
            LOGPROBS: (
                f"uint8 code c: logprob = top_logprob - {LP_RANGE} * (c/254)**2; "
                f"c = {LP_NEG_INF_CODE} means -inf (dropped slot)"
            ),
        }

    def encode_jnp(
        self, ops: ModuleType, profile: Profile, ids_XxK: Any, logprobs_XxK: Any, V: int
    ) -> dict[str, Any]:
        jnp = ops.jnp
        F32 = jnp.float32
        lp = jnp.minimum(logprobs_XxK.astype(jnp.float32), 0)
        top = lp[..., 0]
        finite = jnp.isfinite(lp) & jnp.isfinite(top)[..., None]
        delta = jnp.where(finite, top[..., None] - lp, F32(0.0))
        frac = ops.divide(jnp.clip(delta, F32(0.0), F32(LP_RANGE)), np.float32(LP_RANGE))
        code = jnp.rint(F32(254.0) * jnp.sqrt(frac))
        code = jnp.where(finite, code, F32(LP_NEG_INF_CODE)).astype(jnp.uint8)
        return {
            IDS: profile.encode_ids_jnp(jnp, ids_XxK, V),
            LOGPROBS: code,
            TOP_LOGPROB: jnp.where(jnp.isfinite(top), top, -jnp.inf).astype(jnp.float32),
        }

    def decode_jnp(
        self, jnp: ModuleType, stored: dict[str, Any], k: int, ids_bits: int
    ) -> tuple[Any, Any]:
        """(int32 ids, float32 log-probs) [..., K]: top - LP_RANGE * (code / 254)**2, code 255 = -inf.

        The 256 offsets LP_RANGE * frac * frac are a numpy table made with the
        float32 operations of ``decode``, so the device does one gather and one
        subtract: bitwise the numpy decode (computing the square in the step
        instead lets XLA contract it into a fused multiply-add, one float32 ulp off).
        """
        code, top = stored[LOGPROBS], stored[TOP_LOGPROB]
        frac_C = np.arange(256, dtype=np.float32) * np.float32(1.0 / 254.0)
        offset_C = np.float32(LP_RANGE) * frac_C * frac_C
        lp = top.astype(jnp.float32)[..., None] - jnp.take(
            jnp.asarray(offset_C), code.astype(jnp.int32)
        )
        lp = jnp.where(code == LP_NEG_INF_CODE, -jnp.inf, lp)
        return bitpack.stored_ids_jnp(jnp, stored[IDS], k, ids_bits), lp


CODECS = {c.name: c for c in (Float16Topk(), CompandedTopk())}
