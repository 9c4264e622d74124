"""Beam stages of the spine: files → tokenized chunks → packed work units.

The packing math is in `pipelines.packing`; this module only distributes it:

    (file_index, path) ──ReadTokenizeFn──▶ (split, (file_index, chunk_index), tokens)
                       ──SelectSplit──▶ ((file_index, chunk_index), tokens)  per split
    chunks ──count──▶ Layout (global offsets, a singleton side input)
    Layout ──prepare──▶ committed units of the target store (side input)
    chunks ──split_chunk──▶ (unit, piece) ──GroupByKey──▶ (unit, tokens_RxT)

Pieces of units the store already committed are dropped before the shuffle,
so a resumed run moves (and the teacher sees) only the missing units.

What this asks of the runner (as little as Beam promises): an element may be
processed, and its outputs delivered, more than once (retried bundles,
re-executed stages, a side input recomputed per consumer — the Dask runner
does all three). Every stage is therefore a function of its input alone, and
duplicates are removed where they meet: the Layout keeps one count per chunk
key, a unit keeps one copy of each piece, and the writer skips a unit whose
commit record exists. One ParDo has one output (the split travels in the
element): a multi-output ParDo's tags are not kept apart by every runner.
"""

import itertools

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipelines import inputs, packing
from trainer.model import tokenizer

TRAIN = "train"
HELDOUT = "heldout"
METRICS_NAMESPACE = "pipelines.dump"


class ReadTokenizeFn(beam.DoFn):
    """Reads one file and emits its packed tokens in chunks, per split.

    Input: (file_index, path). Output: (split, (file_index, chunk_index),
    int32 tokens), split TRAIN or HELDOUT — BOS + ids + EOS of each document
    of the chunk in that split, concatenated. Chunk c of a file holds its documents
    [c*docs_per_chunk, (c+1)*docs_per_chunk); chunks with no document of a
    split are not emitted for it.
    """

    def __init__(self, model_bytes, heldout_fraction, input_format, decode_errors, docs_per_chunk):
        self._model_bytes = model_bytes
        self._heldout_fraction = heldout_fraction
        self._input_format = input_format
        self._decode_errors = decode_errors
        self._docs_per_chunk = docs_per_chunk
        self._documents = Metrics.counter(METRICS_NAMESPACE, "documents")
        self._heldout_documents = Metrics.counter(METRICS_NAMESPACE, "heldout_documents")
        self._tokens = Metrics.counter(METRICS_NAMESPACE, "spine_tokens")

    def setup(self):
        self._sp = tokenizer.tokenizer_from_bytes(self._model_bytes)
        self._bos, self._eos = self._sp.bos_id(), self._sp.eos_id()

    def _pack(self, texts):
        ids = self._sp.encode(texts)
        return np.concatenate([packing.pack_document(d, self._bos, self._eos) for d in ids])

    def process(self, element):
        file_index, path = element
        documents = inputs.read_documents(path, self._input_format, self._decode_errors)
        for chunk_index in itertools.count():
            texts = list(itertools.islice(documents, self._docs_per_chunk))
            if not texts:
                break
            key = (file_index, chunk_index)
            split = {TRAIN: [], HELDOUT: []}
            for text in texts:
                split[
                    HELDOUT if packing.is_heldout(text, self._heldout_fraction) else TRAIN
                ].append(text)
            self._documents.inc(len(split[TRAIN]))
            self._heldout_documents.inc(len(split[HELDOUT]))
            for name, group in split.items():
                if group:
                    tokens = self._pack(group)
                    self._tokens.inc(len(tokens))
                    yield name, key, tokens


def _select(element, split):
    name, key, tokens = element
    if name == split:
        yield key, tokens


def _count(element):
    key, tokens = element
    return key, len(tokens)


def _split(element, layout, committed):
    key, tokens = element
    return packing.split_chunk(layout, key, tokens, skip_units=committed)


def _assemble(element, layout):
    unit, pieces = element
    return unit, packing.assemble_unit(layout, unit, packing.unique_pieces(unit, pieces))


class PackUnits(beam.PTransform):
    """Tokenized chunks → (unit, tokens_RxT) for the units a store still lacks.

    Args:
        seq_len: T.
        rows_per_unit: R.
        prepare_store: picklable callable(Layout) -> iterable of committed
            unit indices; it runs once, after every chunk is counted, and is
            where the target store gets created or reopened.
    """

    def __init__(self, seq_len, rows_per_unit, prepare_store, label=None):
        super().__init__(label)
        self._seq_len = seq_len
        self._rows_per_unit = rows_per_unit
        self._prepare_store = prepare_store

    def expand(self, chunks):
        layout = (
            chunks
            | "Count" >> beam.Map(_count)
            | "AllCounts" >> beam.combiners.ToList()
            | "Layout" >> beam.Map(packing.make_layout, self._seq_len, self._rows_per_unit)
        )
        committed = layout | "PrepareStore" >> beam.Map(
            lambda l, prepare: frozenset(prepare(l)), self._prepare_store
        )
        return (
            chunks
            | "SplitByUnit"
            >> beam.FlatMap(
                _split,
                layout=beam.pvalue.AsSingleton(layout),
                committed=beam.pvalue.AsSingleton(committed),
            )
            | "GroupByUnit" >> beam.GroupByKey()
            | "Assemble" >> beam.Map(_assemble, layout=beam.pvalue.AsSingleton(layout))
        )


class ReadSpine(beam.PTransform):
    """Input files → chunk PCollections {TRAIN: ..., HELDOUT: ...}.

    Args:
        paths: the sorted input file list (`inputs.expand_inputs`).
        model_bytes: the serialized SentencePiece model.
        heldout_fraction, input_format, decode_errors, docs_per_chunk: see
            ReadTokenizeFn.
    """

    def __init__(
        self,
        paths,
        model_bytes,
        heldout_fraction,
        input_format,
        decode_errors,
        docs_per_chunk,
        label=None,
    ):
        super().__init__(label)
        self._paths = list(paths)
        self._fn = ReadTokenizeFn(
            model_bytes, heldout_fraction, input_format, decode_errors, docs_per_chunk
        )

    def expand(self, pbegin):
        chunks = (
            pbegin
            | "Files" >> beam.Create(list(enumerate(self._paths)))
            # Spread files over workers; Create alone is one bundle.
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadTokenize" >> beam.ParDo(self._fn)
        )
        return {
            split: chunks | f"Select{split.capitalize()}" >> beam.FlatMap(_select, split)
            for split in (TRAIN, HELDOUT)
        }
