"""Beam stages that touch the store: create/reopen it, run the teacher, commit units.

    Layout ──PrepareStore──▶ store created (or reopened), committed units known
    (unit, tokens_RxT[, mask]) ──BatchUnits──▶ [units] ──RunInference(TeacherModelHandler)──▶ (unit, tokens, signal)
                       ──WriteUnitFn──▶ signal.write: StoreWriter.write_unit_encoded / write_unit
                                        (commit record last; signal: pipelines.unit_signal)

Resume is the store's work-unit ledger: a rerun of the same command skips
units whose commit record exists (`spine.PackUnits` drops them before the
shuffle), and a unit interrupted mid-write has no record, so it is redone;
the store writes identical bytes for identical inputs.

Both stages may run more than once (retries, re-executed bundles, a side
input recomputed per consumer): PrepareStore creates-or-reopens and returns
the launcher's snapshot of committed units, the same on every execution;
WriteUnitFn skips a unit that is already committed. How many units a run
committed is read from the ledger afterwards (`pipelines.dump`), not from
Beam counters, which count attempts.
"""

import time

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

import store
from pipelines import errors, unit_signal
from pipelines.errors import EmptyInputError, StoreStateError
from store import schema as schema_lib

# Two executions of PrepareStore may create the same store at once; the loser
# sees a half-made directory for a moment. Bounded: 20 x 0.25 s.
_CREATE_ATTEMPTS = 20
_CREATE_WAIT_S = 0.25


class PrepareStore:
    """Creates (or reopens) the target store once the row count is known.

    A picklable callable for `spine.PackUnits`: called with the Layout, it
    returns the units to skip. Those are the units committed when the
    launcher started (`committed_before`), not a fresh listing: every
    execution of this stage must return the same set, or two consumers of it
    would split a unit differently.

    Args:
        url: store URL.
        schema: the store.StoreSchema this run writes.
        committed_before: units committed when the run was launched.
        what: "store" or "held-out store", for error messages.
        split: the manifest's split of a new store ("train" / "heldout").
    """

    def __init__(self, url, schema, committed_before=frozenset(), what="store", split=None):
        self._url = url
        self._split = split
        self._schema = schema
        self._committed_before = frozenset(committed_before)
        self._what = what

    def _create(self, num_rows):
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                return store.create_store(
                    self._url, self._schema, num_rows=num_rows, split=self._split
                )
            except store.StoreNotFoundError:
                # A concurrent execution is half-way through creating it.
                if attempt == _CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(_CREATE_WAIT_S)

    def __call__(self, layout):
        if layout.num_rows == 0:
            flag = "--heldout-fraction" if self._what != "store" else "--seq-len"
            raise EmptyInputError(
                f"the input gives {layout.total_tokens} tokens for the {self._what}, fewer than "
                f"one row of {layout.seq_len}; add text or lower {flag}"
            )
        try:
            self._create(layout.num_rows)
        except store.SchemaMismatchError as e:
            self._refuse_other_rows(layout.num_rows)
            raise StoreStateError(
                f"{self._what} {self._url} exists but was made by a different dump ({e}); "
                "rerun with the original inputs and flags, or pass a new URL"
            ) from None
        except errors.STORAGE_ERRORS as e:
            errors.raise_if_storage_failure(e, f"creating {self._what} {self._url}")
            raise
        return sorted(self._committed_before)

    def _refuse_other_rows(self, num_rows):
        """Same flags, other input (e.g. new files added): name the supported path."""
        existing = store.open_writer(self._url)
        other_schema = schema_lib.first_difference(
            existing.schema.to_dict(), self._schema.to_dict()
        )
        if other_schema is not None or existing.num_rows == num_rows:
            return
        # Growing in place is refused: a new file that sorts before an old one
        # would shift every later row under its committed teacher signal.
        raise StoreStateError(
            f"{self._what} {self._url} holds {existing.num_rows} rows but these inputs give "
            f"{num_rows}: a store is never appended to; to add text, dump only the new files to "
            f"a second store with the same flags: python -m pipelines.dump --input NEW_FILES "
            f"--store {self._url.rstrip('/')}_2 ... (or rerun with the original inputs to resume)"
        )


class WriteUnitFn(beam.DoFn):
    """Writes and commits one work unit: element (unit, tokens_RxT, signal: a pipelines.unit_signal value).

    Outputs the unit index; a unit already committed (a duplicate delivery)
    is skipped, so that executing an element twice is harmless.
    """

    def __init__(self, url):
        self._url = url

    def setup(self):
        self._writer = None

    def process(self, element):
        unit, tokens_RxT, signal = element
        if self._writer is None:
            # Opened on the first element, not in setup: a runner may set up a
            # DoFn before PrepareStore (upstream, via the side input) made the store.
            self._writer = store.open_writer(self._url)
        if self._writer.is_committed(unit):
            return
        try:
            signal.write(self._writer, unit, tokens_RxT)  # a pipelines.unit_signal value
        except errors.STORAGE_ERRORS as e:
            errors.raise_if_storage_failure(e, f"writing unit {unit} to {self._url}")
            raise
        yield unit


def _one_unit_batch(element):
    return [element]


def _batch_key(element, units_per_call):
    return element[0] // units_per_call, element


def _unique_units(element):
    # One copy of each unit (a re-executed bundle may have delivered it twice).
    _, units = element  # each (unit, tokens_RxT) or (unit, tokens_RxT, loss_mask_RxT)
    return sorted({u[0]: u for u in units}.values(), key=lambda u: u[0])


class BatchUnits(beam.PTransform):
    """(unit, tokens_RxT) → lists of up to `units_per_call` units: one teacher call each.

    Batches are fixed by unit index (units u // n together), not by bundles,
    so they are the same on every runner and need no finish_bundle output.

    Args:
        units_per_call: units per list (1: no shuffle).
    """

    def __init__(self, units_per_call, label=None):
        super().__init__(label)
        self._units_per_call = units_per_call

    def expand(self, units):
        if self._units_per_call == 1:
            return units | "One" >> beam.Map(_one_unit_batch)
        return (
            units
            | "Key" >> beam.Map(_batch_key, self._units_per_call)
            | "Group" >> beam.GroupByKey()
            | "Units" >> beam.Map(_unique_units)
        )


def _without_signal(element):
    unit, tokens_RxT = element
    return unit, tokens_RxT, unit_signal.HostSignal()


class WriteTeacherSignal(beam.PTransform):
    """(unit, tokens_RxT) → teacher signal → committed store units.

    Args:
        url: store URL (created by PrepareStore).
        handler: a pipelines.teacher_handler.TeacherModelHandler.
        units_per_call: units per teacher call (BatchUnits).
    """

    def __init__(self, url, handler, units_per_call=1, label=None):
        super().__init__(label)
        self._url = url
        self._handler = handler
        self._units_per_call = units_per_call

    def expand(self, units):
        return (
            units
            | "BatchUnits" >> BatchUnits(self._units_per_call)
            | "Teacher" >> RunInference(self._handler)
            | "WriteUnit" >> beam.ParDo(WriteUnitFn(self._url))
        )


class WriteTokensOnly(beam.PTransform):
    """(unit, tokens_RxT) → committed units of a tokens-only (k=0) store.

    Args:
        url: store URL (created by PrepareStore).
    """

    def __init__(self, url, label=None):
        super().__init__(label)
        self._url = url

    def expand(self, units):
        return (
            units
            | "NoSignal" >> beam.Map(_without_signal)
            | "WriteUnit" >> beam.ParDo(WriteUnitFn(self._url))
        )
