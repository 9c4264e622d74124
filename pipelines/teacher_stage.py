"""Beam stages that touch the store: create/reopen it, run the teacher, commit units.

    Layout ──PrepareStore──▶ store created (or reopened), committed units known
    (unit, tokens_RxT) ──RunInference(TeacherModelHandler)──▶ (unit, tokens, signal)
                       ──WriteUnitFn──▶ store.write_unit (commit record last)

Resume is the store's work-unit ledger: a rerun of the same command skips
units whose commit record exists (`spine.PackUnits` drops them before the
shuffle), and a unit interrupted mid-write has no record, so it is redone;
the store writes identical bytes for identical inputs.
"""
import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

import store
from store import profiles
from pipelines.errors import EmptyInputError, StoreStateError
from pipelines.spine import METRICS_NAMESPACE


class PrepareStore:
    """Creates (or reopens) the target store once the row count is known.

    A picklable callable for `spine.PackUnits`: called with the Layout, it
    returns the units already committed (to skip).

    Args:
        url: store URL.
        schema: the store.StoreSchema this run writes.
        what: "store" or "held-out store", for error messages.
        metric_prefix: prefix of this store's counter names.
    """

    def __init__(self, url, schema, what="store", metric_prefix=""):
        self._url = url
        self._schema = schema
        self._what = what
        self._metric_prefix = metric_prefix

    def __call__(self, layout):
        if layout.num_rows == 0:
            flag = "--heldout-fraction" if self._what != "store" else "--seq-len"
            raise EmptyInputError(
                f"the input gives {layout.total_tokens} tokens for the {self._what}, fewer than "
                f"one row of {layout.seq_len}; add text or lower {flag}")
        try:
            writer = store.create_store(self._url, self._schema, num_rows=layout.num_rows)
        except store.SchemaMismatchError as e:
            raise StoreStateError(
                f"{self._what} {self._url} exists but was made by a different dump ({e}); "
                "rerun with the original inputs and flags, or pass a new URL") from None
        committed = writer.committed_units()
        Metrics.counter(METRICS_NAMESPACE, self._metric_prefix + "units_already_committed").inc(len(committed))
        return sorted(committed)


class WriteUnitFn(beam.DoFn):
    """Writes and commits one work unit: element (unit, tokens_RxT, signal | None)."""

    def __init__(self, url, metric_prefix=""):
        self._url = url
        self._units = Metrics.counter(METRICS_NAMESPACE, metric_prefix + "units_committed")
        self._rows = Metrics.counter(METRICS_NAMESPACE, metric_prefix + "rows")
        self._tokens = Metrics.counter(METRICS_NAMESPACE, metric_prefix + "tokens")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, metric_prefix + "bytes_written")

    def setup(self):
        self._writer = None

    def _open(self):
        # Opened on the first element, not in setup: a runner may set up a
        # DoFn before PrepareStore (upstream, via the side input) made the store.
        self._writer = store.open_writer(self._url)
        schema = self._writer.schema
        # Encoded (pre-compression) bytes per row of every array of the store.
        self._row_bytes = sum(s.row_bytes for s in profiles.get_profile(schema.profile).arrays(schema))

    def process(self, element):
        unit, tokens_RxT, signal = element
        if self._writer is None:
            self._open()
        if signal is None:
            self._writer.write_unit(unit, tokens=tokens_RxT)
        else:
            self._writer.write_unit(unit, tokens=tokens_RxT, topk_ids=signal["topk_ids"],
                                    topk_logprobs=signal["topk_logprobs"], hidden=signal["hidden"])
        self._units.inc()
        self._rows.inc(tokens_RxT.shape[0])
        self._tokens.inc(tokens_RxT.size)
        self._bytes.inc(tokens_RxT.shape[0] * self._row_bytes)
        yield unit


def _without_signal(element):
    unit, tokens_RxT = element
    return unit, tokens_RxT, None


class WriteTeacherSignal(beam.PTransform):
    """(unit, tokens_RxT) → teacher signal → committed store units.

    Args:
        url: store URL (created by PrepareStore).
        handler: a pipelines.teacher_handler.TeacherModelHandler.
    """

    def __init__(self, url, handler, label=None):
        super().__init__(label)
        self._url = url
        self._handler = handler

    def expand(self, units):
        return (
            units
            | "Teacher" >> RunInference(self._handler)
            | "WriteUnit" >> beam.ParDo(WriteUnitFn(self._url)))


class WriteTokensOnly(beam.PTransform):
    """(unit, tokens_RxT) → committed units of a tokens-only (k=0) store."""

    def __init__(self, url, metric_prefix="heldout_", label=None):
        super().__init__(label)
        self._url = url
        self._metric_prefix = metric_prefix

    def expand(self, units):
        return (
            units
            | "NoSignal" >> beam.Map(_without_signal)
            | "WriteUnit" >> beam.ParDo(WriteUnitFn(self._url, metric_prefix=self._metric_prefix)))
