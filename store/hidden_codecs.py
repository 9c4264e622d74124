"""The hidden family's codecs: how a profile stores one captured layer ``hidden/<l>``.

A codec holds its array specs, its numpy encoder and decoder, their jnp twins
and its manifest description side by side; a profile (store/profiles.py)
picks one by name. The twins take the JAX side as an argument (this package
never imports JAX), as in store/topk_codecs.py: ``encode_jnp(ops, layer, x)``
(``ops`` = teacher_dump.encode_ops) writes the numpy encoder's bytes, and
``decode_jnp(jnp, stored, layer, signs)`` (``jnp`` = jax.numpy; ``signs`` the
manifest's ``hidden_signs``, lean only) gives the numpy decoder's normalized
values y = x / rms(x) bit for bit: the train step reads activations
normalized. Every codec stores y in some form plus the float32 per-token RMS
(``hidden_aux/<l>/rms``); a normalized read (``decode(..., normalized=True)``)
never reads the RMS.

``float16_rms`` (exact, per token at D=2560: 5,124 B):
  * ``hidden/<l>``          float16 of y                            [N,T,D]
  * ``hidden_aux/<l>/rms``  float32 per-token RMS                   [N,T]
  zarr-python cannot read bfloat16, and y has every element <= sqrt(D) in
  magnitude, so float16 (3 more mantissa bits than bfloat16) cannot
  overflow; decode is ``hidden * rms``, and a normalized read is the stored
  array itself.

``int8_outliers`` (compact):
  * ``hidden/<l>``                 int8, zstd                       [N,T,D]
  * ``hidden_aux/<l>/rms``         float32 per-token RMS            [N,T]
  * ``hidden_aux/<l>/qstep``       float16 step of the int8 grid    [N,T]
  * ``hidden_aux/<l>/outlier_idx`` uint16 channel of the n largest  [N,T,n]
  * ``hidden_aux/<l>/outlier_val`` float16 their normalised value   [N,T,n]
      the n = NUM_OUTLIERS largest |y| (ties to the lower channel, as
      lax.top_k: store/topn.py) are kept in float16, the rest is quantised on
      a per-token grid qstep = max|rest| / 127. Decode: y = int8 * qstep;
      y[idx] = val; x = y * rms. Residual streams carry a few channels
      10-100x larger than the rest; an absmax grid set by them would flatten
      everything else.

``lean``: 6-level rotated codes (store/lean.py has the rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from store import lean
from store.layout import ArraySpec
from store.topn import top_n_channels

if TYPE_CHECKING:
    from store.schema import StoreSchema

NUM_OUTLIERS = 8


HIDDEN_PREFIX = "hidden/"


def hidden_name(layer: int) -> str:
    """The stored array (and the store field) of a captured layer: "hidden/<l>"."""
    return f"{HIDDEN_PREFIX}{layer}"


def aux_name(layer: int, what: str) -> str:
    """A side array of a captured layer: "hidden_aux/<l>/<what>"."""
    return f"hidden_aux/{layer}/{what}"


def rms(x_RxTxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token RMS (float32) and the same with zeros replaced by 1 (safe divisor)."""
    r = np.sqrt(np.mean(np.square(x_RxTxD), axis=-1, dtype=np.float32)).astype(np.float32)
    return r, np.where(r > 0, r, np.float32(1.0))


class Float16Hidden:
    """float16 x / rms(x) and the float32 RMS (exact)."""

    name = "float16_rms"

    def check_schema(self, schema: StoreSchema) -> None:
        """Every width can be stored."""

    def specs(self, layer: int, T: int, D: int) -> list[ArraySpec]:
        return [
            ArraySpec(hidden_name(layer), (T, D), "float16", ("pos", "d")),
            ArraySpec(aux_name(layer, "rms"), (T,), "float32", ("pos",)),
        ]

    def encode(self, layer: int, x_RxTxD: np.ndarray) -> dict[str, np.ndarray]:
        r, safe = rms(x_RxTxD)
        # Divide straight into float16 (numpy casts chunk by chunk): no
        # full-size float32 temporary.
        y16 = np.empty(x_RxTxD.shape, np.float16)
        np.divide(x_RxTxD, safe[..., None], out=y16, casting="same_kind")
        return {hidden_name(layer): y16, aux_name(layer, "rms"): r}

    def decode(
        self,
        layer: int,
        stored: dict[str, np.ndarray],
        dtype: npt.DTypeLike,
        normalized: bool = False,
    ) -> np.ndarray:
        y = stored[hidden_name(layer)]
        if normalized:
            return y.astype(dtype, copy=False)  # float16: the stored bytes, zero decode work
        r = stored[aux_name(layer, "rms")]
        out = np.multiply(y, r[..., None], dtype=np.float32)
        return out if np.dtype(dtype) == np.float32 else out.astype(dtype)

    def describe(self, schema: StoreSchema) -> dict[str, Any]:
        return {
            "hidden/<l>": "float16 x/rms(x) (per-token RMS-normalised residual stream after l blocks)",
            "hidden_aux/<l>/rms": "float32 per-token RMS; x = hidden/<l> * rms[..., None]",
        }

    def encode_jnp(self, ops: ModuleType, layer: int, x_XxD: Any) -> dict[str, Any]:
        jnp = ops.jnp
        x = x_XxD.astype(jnp.float32)
        r, safe = ops.rms(x)
        return {
            hidden_name(layer): ops.divide(x, safe[..., None]).astype(jnp.float16),
            aux_name(layer, "rms"): r,
        }

    def decode_jnp(
        self, jnp: ModuleType, stored: dict[str, Any], layer: int, signs: Sequence[int]
    ) -> Any:
        return stored[hidden_name(layer)].astype(jnp.float32)


class OutlierInt8Hidden:
    """int8 grid per token with the NUM_OUTLIERS largest channels in float16 (compact)."""

    name = "int8_outliers"

    def check_schema(self, schema: StoreSchema) -> None:
        """Every width can be stored."""

    def specs(self, layer: int, T: int, D: int) -> list[ArraySpec]:
        n = min(NUM_OUTLIERS, D)
        return [
            ArraySpec(hidden_name(layer), (T, D), "int8", ("pos", "d"), zstd=True),
            ArraySpec(aux_name(layer, "rms"), (T,), "float32", ("pos",)),
            ArraySpec(aux_name(layer, "qstep"), (T,), "float16", ("pos",)),
            ArraySpec(aux_name(layer, "outlier_idx"), (T, n), "uint16", ("pos", "outlier")),
            ArraySpec(aux_name(layer, "outlier_val"), (T, n), "float16", ("pos", "outlier")),
        ]

    def encode(self, layer: int, x_RxTxD: np.ndarray) -> dict[str, np.ndarray]:
        D = x_RxTxD.shape[-1]
        n = min(NUM_OUTLIERS, D)
        r, safe = rms(x_RxTxD)
        y = np.divide(x_RxTxD, safe[..., None], dtype=np.float32)
        a = np.abs(y)
        idx = top_n_channels(a, n)
        val = np.take_along_axis(y, idx, axis=-1)
        np.put_along_axis(y, idx, 0.0, axis=-1)
        np.put_along_axis(a, idx, 0.0, axis=-1)  # a is now |y| with the outliers zeroed
        step = (np.max(a, axis=-1) / 127.0).astype(np.float16)
        step = np.where(step > 0, step, np.float16(1.0))
        # In place, same arithmetic as clip(rint(y / step)): no full-size temporaries.
        np.divide(y, step.astype(np.float32)[..., None], out=y)
        np.rint(y, out=y)
        np.clip(y, -127, 127, out=y)
        q = y.astype(np.int8)
        return {
            hidden_name(layer): q,
            aux_name(layer, "rms"): r,
            aux_name(layer, "qstep"): step,
            aux_name(layer, "outlier_idx"): idx.astype(np.uint16),
            aux_name(layer, "outlier_val"): val.astype(np.float16),
        }

    def decode(
        self,
        layer: int,
        stored: dict[str, np.ndarray],
        dtype: npt.DTypeLike,
        normalized: bool = False,
    ) -> np.ndarray:
        q = stored[hidden_name(layer)]
        idx = stored[aux_name(layer, "outlier_idx")].astype(np.intp)
        val = stored[aux_name(layer, "outlier_val")]
        step = stored[aux_name(layer, "qstep")].astype(np.float32)
        if normalized:
            # y = q * qstep, outliers restored. Computed in float32 and cast
            # by the ufunc's buffered output loop (no full-size float32
            # temporary when dtype is float16); int8 * float16-step is exact
            # in float32, so the float16 result is the correctly rounded y.
            y = np.empty(q.shape, dtype)
            np.multiply(q, step[..., None], out=y, dtype=np.float32, casting="unsafe")
            np.put_along_axis(y, idx, val.astype(dtype, copy=False), axis=-1)
            return y
        r = stored[aux_name(layer, "rms")]
        # One pass over the output: fold rms into the per-token step first.
        x = np.multiply(q, (step * r)[..., None], dtype=np.float32)
        np.put_along_axis(x, idx, val.astype(np.float32) * r[..., None], axis=-1)
        return x if np.dtype(dtype) == np.float32 else x.astype(dtype)

    def describe(self, schema: StoreSchema) -> dict[str, Any]:
        return {
            "hidden/<l>": "int8 q of y = x/rms(x) with the outlier channels zeroed",
            "hidden_aux/<l>/rms": "float32 per-token RMS of x",
            "hidden_aux/<l>/qstep": "float16 per-token step: y = q * qstep",
            "hidden_aux/<l>/outlier_idx": "uint16 channels of the largest |y| (then y[idx] = outlier_val)",
            "hidden_aux/<l>/outlier_val": "float16 y at those channels; finally x = y * rms[..., None]",
            "num_outliers": min(NUM_OUTLIERS, schema.hidden_dim)
            if schema.hidden_dim
            else NUM_OUTLIERS,
        }

    def encode_jnp(self, ops: ModuleType, layer: int, x_XxD: Any) -> dict[str, Any]:
        jnp = ops.jnp
        F32 = jnp.float32
        n = min(NUM_OUTLIERS, x_XxD.shape[-1])
        x = x_XxD.astype(F32)
        r, safe = ops.rms(x)
        y = ops.divide(x, safe[..., None])
        a = jnp.abs(y)
        idx, outlier = ops.top_n_channels(a, n)
        val = jnp.take_along_axis(y, idx, axis=-1)
        y = jnp.where(outlier, F32(0.0), y)
        a = jnp.where(outlier, F32(0.0), a)
        step = ops.divide(jnp.max(a, axis=-1), np.float32(127.0)).astype(jnp.float16)
        step = jnp.where(step > 0, step, jnp.float16(1.0))
        q = jnp.clip(jnp.rint(ops.divide(y, step.astype(F32)[..., None])), -127, 127)
        return {
            hidden_name(layer): q.astype(jnp.int8),
            aux_name(layer, "rms"): r,
            aux_name(layer, "qstep"): step,
            aux_name(layer, "outlier_idx"): idx.astype(jnp.uint16),
            aux_name(layer, "outlier_val"): val.astype(jnp.float16),
        }

    def decode_jnp(
        self, jnp: ModuleType, stored: dict[str, Any], layer: int, signs: Sequence[int]
    ) -> Any:
        # y = int8 * qstep (exact in float32), the outlier channels restored.
        step = stored[aux_name(layer, "qstep")].astype(jnp.float32)
        y = stored[hidden_name(layer)].astype(jnp.float32) * step[..., None]
        idx = stored[aux_name(layer, "outlier_idx")].astype(jnp.int32)
        val = stored[aux_name(layer, "outlier_val")].astype(jnp.float32)
        return jnp.put_along_axis(y, idx, val, axis=-1, inplace=False)


class LeanHidden:
    """6-level rotated codes, 3 per byte, per-group float16 steps (store/lean.py)."""

    name = "lean"

    def check_schema(self, schema: StoreSchema) -> None:
        lean.check_dim(schema.hidden_dim)

    def specs(self, layer: int, T: int, D: int) -> list[ArraySpec]:
        return lean.hidden_specs(hidden_name(layer), lambda what: aux_name(layer, what), T, D)

    def encode(self, layer: int, x_RxTxD: np.ndarray) -> dict[str, np.ndarray]:
        r, safe = rms(x_RxTxD)
        codes, step = lean.encode(x_RxTxD, safe)
        return {hidden_name(layer): codes, aux_name(layer, "rms"): r, aux_name(layer, "step"): step}

    def decode(
        self,
        layer: int,
        stored: dict[str, np.ndarray],
        dtype: npt.DTypeLike,
        normalized: bool = False,
    ) -> np.ndarray:
        codes, step = stored[hidden_name(layer)], stored[aux_name(layer, "step")]
        D = lean.dim_of(codes.shape[-1], step.shape[-1])
        r = None if normalized else stored[aux_name(layer, "rms")]
        return lean.decode(codes, step, D, dtype, r)

    def describe(self, schema: StoreSchema) -> dict[str, Any]:
        return lean.describe(schema.hidden_dim) if schema.hidden_dim else {}

    def encode_jnp(self, ops: ModuleType, layer: int, x_XxD: Any) -> dict[str, Any]:
        D = x_XxD.shape[-1]
        codes, r, step = lean.encode_jnp(ops, x_XxD, lean.signs(D), lean.LEAN_STEP)
        return {hidden_name(layer): codes, aux_name(layer, "rms"): r, aux_name(layer, "step"): step}

    def decode_jnp(
        self, jnp: ModuleType, stored: dict[str, Any], layer: int, signs: Sequence[int]
    ) -> Any:
        return lean.decode_jnp(
            jnp, stored[hidden_name(layer)], stored[aux_name(layer, "step")], signs
        )


CODECS = {c.name: c for c in (Float16Hidden(), OutlierInt8Hidden(), LeanHidden())}
