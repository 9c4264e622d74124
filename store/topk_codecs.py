"""The top-k family's codecs: how a profile stores ``topk/ids`` and ``topk/logprobs``.

A codec holds its array specs, its numpy encoder and decoder and its manifest
description side by side; a profile (store/profiles.py) picks one by name.
The device twins are keyed by the same names: ``teacher_dump.encode.TOPK_ENCODERS``
(encode, jnp) and ``trainer.training.decode.TOPK_DECODERS`` (decode, jnp).
Ids are stored as the profile stores every id array (``Profile.ids_spec``:
bit-packed or uint16/int32), so the profile is passed in.

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

import numpy as np

from store.layout import ArraySpec

IDS = "topk/ids"
LOGPROBS = "topk/logprobs"
TOP_LOGPROB = "topk/top_logprob"
LP_RANGE = 32.0  # nats below the top-1 covered by the uint8 log-prob code
LP_NEG_INF_CODE = 255
_DROPPED = "vocabulary id; slots dropped by top-p hold id 0"


def _describe_ids(profile, V: int) -> str:
    return (
        profile.describe_ids(V, "slots dropped by top-p hold id 0")
        if profile.packs_ids
        else _DROPPED
    )


class Float16Topk:
    """float16 log-probs (exact): readable and decodable with plain numpy."""

    name = "float16"

    def specs(self, profile, T: int, K: int, V: int) -> list[ArraySpec]:
        return [
            profile.ids_spec(IDS, T, K, V, "k"),
            ArraySpec(LOGPROBS, (T, K), "float16", ("pos", "k")),
        ]

    def encode(self, profile, ids_RxTxK, logprobs_RxTxK, V: int) -> dict:
        return {
            IDS: profile.encode_ids(ids_RxTxK, V),
            LOGPROBS: np.minimum(logprobs_RxTxK, 0).astype(np.float16),
        }

    def decode(self, profile, stored: dict, ids_dtype, logprobs_dtype, V):
        lp = stored[LOGPROBS]
        return (
            profile.decode_ids(stored[IDS], lp.shape[-1], V, ids_dtype),
            lp.astype(logprobs_dtype, copy=False),
        )

    def describe(self, profile, schema) -> dict:
        return {
            IDS: _describe_ids(profile, schema.vocab_size),
            LOGPROBS: "float16 log-prob at tau=1, sorted descending; -inf = dropped slot",
        }


class CompandedTopk:
    """uint8 square-root companded log-probs below a float32 top-1 (compact, lean)."""

    name = "uint8_companded"

    def specs(self, profile, T: int, K: int, V: int) -> list[ArraySpec]:
        return [
            profile.ids_spec(IDS, T, K, V, "k"),
            ArraySpec(LOGPROBS, (T, K), "uint8", ("pos", "k"), zstd=True),
            ArraySpec(TOP_LOGPROB, (T,), "float32", ("pos",)),
        ]

    def encode(self, profile, ids_RxTxK, logprobs_RxTxK, V: int) -> dict:
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

    def decode(self, profile, stored: dict, ids_dtype, logprobs_dtype, V):
        code = stored[LOGPROBS]
        top = stored[TOP_LOGPROB]
        frac = code.astype(np.float32) * np.float32(1.0 / 254.0)
        lp = top[..., None] - np.float32(LP_RANGE) * frac * frac
        lp[code == LP_NEG_INF_CODE] = -np.inf
        ids = profile.decode_ids(stored[IDS], code.shape[-1], V, ids_dtype)
        return ids, lp.astype(logprobs_dtype, copy=False)

    def describe(self, profile, schema) -> dict:
        return {
            IDS: _describe_ids(profile, schema.vocab_size),
            TOP_LOGPROB: "float32 top-1 log-prob at tau=1",
            LOGPROBS: (
                f"uint8 code c: logprob = top_logprob - {LP_RANGE} * (c/254)**2; "
                f"c = {LP_NEG_INF_CODE} means -inf (dropped slot)"
            ),
        }


CODECS = {c.name: c for c in (Float16Topk(), CompandedTopk())}
