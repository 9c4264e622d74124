"""Dumping from a tokens store: rows scored as they are, no re-tokenizing (on-policy rollouts).

    python -m pipelines.dump --input-store ROUND/rollouts --store ROUND/scored \\
        --teacher ckpt/teacher --k 128 [--hidden-layers L ...] [--profile P] [--samples S]

Row r of ``--store`` is row r of ``--input-store``: the tokens are copied, the
input's ``loss_mask`` (store/rollout.py) is copied unchanged, and the teacher
adds its signal, ``token_logprob`` included when asked (``--token-logprob``;
by default iff the input has a mask). Work units are the output store's
(``--rows-per-unit``): unit u reads input rows [u*R, (u+1)*R), whatever the
input's own unit size, so the output does not depend on how the input was
written.

    units to write ──ReadUnitFn──▶ (unit, tokens_RxT[, loss_mask_RxT]) ──▶ teacher_stage.WriteTeacherSignal

The input must be complete (every unit committed) and is fingerprinted at
launch: ``source_packing`` puts its row count and a sha256 over its commit
records' tokens/loss_mask digests into the output's manifest, so resuming
the same command against a different input (the next round written to the
same URL) is refused by the schema check instead of mixing two rounds.
Resume otherwise works as for text: committed output units are skipped and
a re-written unit gets identical bytes.
"""

import dataclasses
import hashlib
import json

import apache_beam as beam
import numpy as np

import store
from pipelines import packing
from pipelines.errors import EmptyInputError, InputError, OptionsError
from store import layout, ledger, rollout


@dataclasses.dataclass(frozen=True)
class InputStore:
    """A tokens store checked for scoring.

    Attributes:
        url: its URL.
        schema: its StoreSchema.
        num_rows: rows N (every one committed).
        content_sha256: sha256 over (unit, rows, tokens and loss_mask digests) of its commit records.
    """

    url: str
    schema: store.StoreSchema
    num_rows: int
    content_sha256: str


def open_input(url, seq_len=None) -> InputStore:
    """Opens and checks an --input-store.

    Args:
        url: the store's path or URL.
        seq_len: --seq-len if given (must be the store's), else None.

    Raises:
        InputError: not a store, an unreadable or incomplete store.
        EmptyInputError: a store without rows.
        OptionsError: --seq-len disagrees with the store's.
    """
    try:
        reader = store.StoreReader(url)
    except store.IncompleteStoreError as e:
        raise InputError(
            f"--input-store is not complete: {_clean(e).split('; ')[0]}; finish writing it "
            "(re-run the command that writes it) before scoring it"
        ) from None
    except store.StoreError as e:
        raise InputError(f"--input-store: {_clean(e)}") from None
    schema = reader.schema
    if reader.num_rows == 0:
        raise EmptyInputError(
            f"--input-store {reader.url} has no rows; write the rollouts first (or pass another store)"
        )
    if seq_len is not None and seq_len != schema.seq_len:
        raise OptionsError(
            f"--seq-len={seq_len} but --input-store {reader.url} has seq_len={schema.seq_len}; "
            "drop --seq-len (the input store's rows are scored as they are)"
        )
    return InputStore(reader.url, schema, reader.num_rows, content_sha256(reader))


def _clean(e) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def content_sha256(reader) -> str:
    """sha256 over the commit records' digests of the rows a dump copies (tokens, loss_mask)."""
    kv = layout.open_kvstore(reader.url)
    records = ledger.read_many(kv, range(reader.num_units))
    names = [n for n in ("tokens", rollout.LOSS_MASK) if n in reader.stored_names()]
    h = hashlib.sha256()
    for unit in range(reader.num_units):
        record = records.get(unit)
        if not isinstance(record, dict):  # the reader saw it committed: a race with a re-write
            raise InputError(
                f"--input-store {reader.url}: unit {unit}'s commit record is gone or damaged; "
                f"run `python -m store verify {reader.url}`"
            )
        entry = [unit, record["rows"]] + [record["arrays"][n]["sha256"] for n in names]
        h.update(json.dumps(entry).encode())
    return h.hexdigest()


def source_packing(source: InputStore, split: str) -> dict:
    """The output manifest's ``packing``: the rows are the input's, one to one."""
    return {
        "rule": "input_store",
        "split": split,
        "source": {
            "num_rows": source.num_rows,
            "content_sha256": source.content_sha256,
            "packing": source.schema.packing,
        },
    }


def unit_layout(source: InputStore, rows_per_unit: int) -> packing.Layout:
    """The output's row layout (what teacher_stage.PrepareStore takes): the input's rows."""
    T = source.schema.seq_len
    return packing.Layout(
        offsets={}, total_tokens=source.num_rows * T, seq_len=T, rows_per_unit=rows_per_unit
    )


class ReadUnitFn(beam.DoFn):
    """unit → (unit, tokens_RxT[, loss_mask_RxT]) of input rows [u*R, min((u+1)*R, N)).

    Units in ``committed`` (the output's, at launch) are skipped. The mask
    travels only when the input stores one (an input without one gives an
    output without one: store/rollout.py's all-ones default holds for both).
    """

    def __init__(self, url, rows_per_unit, num_rows, with_mask):
        self._url = url
        self._rows_per_unit = rows_per_unit
        self._num_rows = num_rows
        self._with_mask = with_mask

    def setup(self):
        self._reader = None

    def process(self, unit, committed):
        if unit in committed:
            return
        if self._reader is None:
            self._reader = store.StoreReader(self._url)
        start = unit * self._rows_per_unit
        rows = np.arange(start, min(start + self._rows_per_unit, self._num_rows))
        fields = ("tokens", rollout.LOSS_MASK) if self._with_mask else ("tokens",)
        got = self._reader.read(rows, fields=fields)
        if self._with_mask:
            yield unit, got["tokens"], got[rollout.LOSS_MASK]
        else:
            yield unit, got["tokens"]


class ReadStoreUnits(beam.PTransform):
    """The output units still to write, read from the input store.

    Args:
        source: the InputStore.
        rows_per_unit: the output's unit size.
        prepare_store: teacher_stage.PrepareStore of the output store; it runs
            once, before any unit is read, and returns the units to skip.
    """

    def __init__(self, source: InputStore, rows_per_unit: int, prepare_store, label=None):
        super().__init__(label)
        self._source = source
        self._rows_per_unit = rows_per_unit
        self._prepare_store = prepare_store

    def expand(self, pbegin):
        layout_ = unit_layout(self._source, self._rows_per_unit)
        committed = (
            pbegin
            | "Layout" >> beam.Create([layout_])
            | "PrepareStore"
            >> beam.Map(lambda l, prepare: frozenset(prepare(l)), self._prepare_store)
        )
        return (
            pbegin
            | "Units" >> beam.Create(list(range(layout_.num_units)))
            # Spread units over workers; Create alone is one bundle.
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadUnit"
            >> beam.ParDo(
                ReadUnitFn(
                    self._source.url,
                    self._rows_per_unit,
                    self._source.num_rows,
                    self._source.schema.loss_mask,
                ),
                committed=beam.pvalue.AsSingleton(committed),
            )
        )
