"""Beam RunInference ModelHandler for the teacher.

Contract with the dump pipeline (pipelines/):

* One input element is one RunInference call: a list of store work units
  ``(unit_index: int, tokens_RxT: int32 numpy [R, T])``, or
  ``(unit_index, tokens_RxT, loss_mask_RxT uint8)`` for rows read from a
  rollout store (``pipelines.store_input``): the mask is the input's, copied
  into the unit's signal unchanged. The pipeline forms
  these lists itself, by unit index (``pipelines.teacher_stage.BatchUnits``,
  ``--units-per-call``), so RunInference's own BatchElements is skipped: it
  emits each bundle's last batch from ``finish_bundle``, which a runner may
  drop (the Dask runner does: the last unit of every bundle was lost), and
  its batches depend on bundle sizes.
* One output element per unit, same unit:
  ``(unit_index, tokens_RxT, signal)``, ``signal`` a ``pipelines.unit_signal``
  value: ``HostSignal(values={"topk_ids": int32[R,T,K], "topk_logprobs":
  float32[R,T,K], "hidden": {l: float32[R,T,D]}})`` (no topk_* when k = 0; plus
  ``sampled_ids`` / ``sampled_counts`` / ``sampled_logprobs`` [R,T,S] when
  samples > 0, keyed by the global store row ``unit_index * rows_per_unit +
  r``; ``token_logprob`` [R,T] with ``token_logprob``; ``loss_mask`` when the
  input carried one: exactly the arguments ``StoreWriter.write_unit`` takes); with
  ``encode_for`` (what pipelines.dump passes), the store's arrays encoded on
  the device instead, ``DeviceEncoded(arrays={stored array: [R, ...]})``
  (write_unit_encoded). The writer calls ``signal.write``.
* Host memory holds the signal of one call's units; rows inside them are fed
  to the device in batches of ``batch_size`` with transfer overlapped (loop.py).

The teacher is loaded once per worker process: RunInference keeps the loaded
model in a process-wide ``shared.Shared`` handle, so every thread of a worker
uses the same params and the same compiled step. ``share_across_processes``
asks Beam to share one copy between the processes of a machine instead.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference import base

from pipelines import unit_signal
from teacher_dump import encode, extract
from teacher_dump import teacher as teacher_lib
from trainer.model.errors import ConfigError, ModelInputError


def _check_element(element) -> tuple[int, np.ndarray, np.ndarray | None]:
    if not (isinstance(element, (tuple, list)) and len(element) in (2, 3)):
        raise ModelInputError(
            f"expected a (unit_index, tokens_RxT[, loss_mask_RxT]) tuple, got "
            f"{type(element).__name__}: map units to (index, int32 rows) "
            f"before RunInference"
        )
    unit_index, tokens = element[:2]
    mask = None if len(element) == 2 else np.asarray(element[2])
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ModelInputError(
            f"unit {unit_index}: tokens must be an integer [rows, seq_len] "
            f"array, got {tokens.dtype}{list(tokens.shape)}: pass the unit's "
            f"int32 token rows"
        )
    if mask is not None and mask.shape != tokens.shape:
        raise ModelInputError(
            f"unit {unit_index}: loss_mask is {list(mask.shape)}, its tokens "
            f"{list(tokens.shape)}: pass the mask of the same rows"
        )
    return int(unit_index), tokens, mask


class TeacherModelHandler(base.ModelHandler):
    """Runs teacher extraction on work units inside beam RunInference."""

    def __init__(
        self,
        ckpt: str,
        k: int = 128,
        layers: Sequence[int] | None = None,
        batch_size: int = 8,
        top_p: float | None = None,
        dtype: str | None = None,
        token_tile: int = extract.DEFAULT_TOKEN_TILE,
        share_across_processes: bool = False,
        num_devices: int | None = 1,
        samples: int = 0,
        rows_per_unit: int | None = None,
        encode_for=None,
        encode_profile=None,
        token_logprob: bool = False,
    ):
        """Configures the handler (nothing is loaded until load_model).

        Args:
            ckpt: teacher checkpoint directory (model_io.save_model format).
            k: top-k size.
            layers: captured layers; default (L // 2,).
            batch_size: rows per device call.
            top_p: optional top-p truncation.
            dtype: compute dtype override, e.g. "bfloat16" on GPU.
            token_tile: tokens per de-embedding tile.
            share_across_processes: one teacher per machine instead of per
                worker process (Beam multi_process_shared).
            num_devices: local devices to split each batch over (params
                replicated); None = all; batch_size must divide evenly.
            samples: draws per position (sampled logits; 0: none).
            rows_per_unit: the store's unit size, which maps a unit's rows to
                the global store rows that key the draws (required iff
                samples > 0).
            encode_for: the store's StoreSchema: encode on the device; the signal is then
                unit_signal.DeviceEncoded (StoreWriter.write_unit_encoded).
            encode_profile: the existing store's Profile (store.profiles.for_store), None: new store.
            token_logprob: also the log-prob of each realized next token (store/rollout.py).

        Raises:
            ConfigError: samples > 0 without rows_per_unit.
        """
        if samples and not rows_per_unit:
            raise ConfigError(
                f"samples={samples} draws are keyed by the global store row: pass "
                f"rows_per_unit (the store's unit size) to TeacherModelHandler"
            )
        super().__init__()
        self._ckpt = str(ckpt)
        self._k = k
        self._layers = None if layers is None else tuple(layers)
        self._batch_size = batch_size
        self._top_p = top_p
        self._dtype = dtype
        self._token_tile = token_tile
        self._share_across_processes = share_across_processes
        self._num_devices = num_devices
        self._samples = samples
        self._token_logprob = token_logprob
        self._rows_per_unit = rows_per_unit
        self._encode_for = encode_for
        self._encode = {"encode_for": encode_for, "encode_profile": encode_profile}

    def load_model(self) -> teacher_lib.Teacher:
        """Loads the teacher and compiles nothing yet (first batch compiles).

        Returns:
            The Teacher; its options are validated here so a bad k/layer fails
            at worker start-up, not on the first unit.
        """
        teacher = teacher_lib.load_teacher(
            self._ckpt, dtype=self._dtype, devices=teacher_lib.local_devices(self._num_devices)
        )
        teacher.extract_fn(
            k=self._k,
            layers=self._layers,
            top_p=self._top_p,
            token_tile=self._token_tile,
            samples=self._samples,
            token_logprob=self._token_logprob,
            **self._encode,
        )
        return teacher

    def run_inference(
        self,
        batch: Sequence[Any],
        model: teacher_lib.Teacher,
        inference_args: Mapping[str, Any] | None = None,
    ) -> Iterable[tuple[int, np.ndarray, unit_signal.UnitSignal]]:
        """Extracts the signal of every unit in the batch.

        All rows of the batch's units run as one overlapped stream, then the
        results are split back per unit.

        Args:
            batch: one input element: a list of (unit_index, tokens_RxT).
            model: the loaded Teacher.
            inference_args: unused (must be empty).

        Returns:
            A list of (unit_index, tokens_RxT, signal) in input order.
        """
        units = [_check_element(e) for e in batch]
        seq_lens = {t.shape[1] for _, t, _ in units}
        if len(seq_lens) > 1:
            raise ModelInputError(
                f"units in one call have different seq_len {sorted(seq_lens)}: "
                f"a store has one seq_len; dump one store at a time"
            )
        rows = np.concatenate([t for _, t, _ in units]).astype(np.int32, copy=False)
        # A method call, so that a multi-process proxy of the Teacher works too.
        signal = model.extract(
            rows,
            batch_size=self._batch_size,
            k=self._k,
            layers=self._layers,
            top_p=self._top_p,
            token_tile=self._token_tile,
            samples=self._samples,
            token_logprob=self._token_logprob,
            row_ids=self._row_ids(units),
            **self._encode,
        )
        signal = (
            unit_signal.DeviceEncoded(arrays=encode.host_arrays(signal))
            if self._encode_for is not None
            else unit_signal.HostSignal(values=signal)
        )
        results, start = [], 0
        for unit_index, tokens, mask in units:
            stop = start + tokens.shape[0]
            unit = signal.rows(start, stop)
            results.append(
                (unit_index, tokens, unit if mask is None else unit.with_loss_mask(mask))
            )
            start = stop
        Metrics.counter("teacher_dump", "units").inc(len(units))
        Metrics.counter("teacher_dump", "tokens").inc(int(rows.size))
        return results

    def _row_ids(self, units):
        """Global store rows of the units' rows (None without samples)."""
        if not self._samples:
            return None
        for unit_index, tokens, _ in units:
            if tokens.shape[0] > self._rows_per_unit:
                raise ModelInputError(
                    f"unit {unit_index} has {tokens.shape[0]} rows, more than "
                    f"rows_per_unit={self._rows_per_unit}: pass the store's unit size"
                )
        return np.concatenate(
            [
                unit_index * self._rows_per_unit + np.arange(tokens.shape[0])
                for unit_index, tokens, _ in units
            ]
        )

    def validate_inference_args(self, inference_args):
        if inference_args:
            raise ModelInputError(
                f"TeacherModelHandler takes no inference_args, got "
                f"{sorted(inference_args)}: set options on the handler"
            )

    def should_skip_batching(self) -> bool:
        # Elements arrive already batched (see the module docstring).
        return True

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        # Cheaper and truer than Beam's default pickle size.
        return sum(np.asarray(e[1]).nbytes for e in batch)

    def get_metrics_namespace(self) -> str:
        return "TeacherModelHandler"

    def share_model_across_processes(self) -> bool:
        return self._share_across_processes
