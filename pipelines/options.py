"""Command-line options of the dump pipeline, as a Beam PipelineOptions view.

Our flags live next to Beam's own (`--runner`, `--direct_num_workers`,
`--project`, `--sdk_container_image`, ...), so one argv configures both and
runner flags pass through untouched. Each flag accepts both spellings
(`--seq-len` and `--seq_len`): users type dashes, while Beam re-serialises
options for remote workers with the underscore `dest` names.
"""
import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.errors import OptionsError


def _flag(parser, name, **kwargs):
    dashed = "--" + name.replace("_", "-")
    names = [dashed, "--" + name] if "_" in name else [dashed]
    parser.add_argument(*names, dest=name, **kwargs)


class DumpOptions(PipelineOptions):
    """Flags of `python -m pipelines.dump` (see docs/pipelines.md)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _flag(parser, "input", action="append", default=None,
              help="input file glob (repeatable): .txt, .jsonl[.gz], .parquet")
        _flag(parser, "store", default=None, help="output store URL (path, file://, gs://, s3://)")
        _flag(parser, "teacher", default=None,
              help="teacher checkpoint (model_io.save_model format); omit it for a tokens-only "
                   "store (k=0), e.g. to pre-train a teacher")
        _flag(parser, "tokenizer", default=None, help="SentencePiece .model file")
        _flag(parser, "seq_len", type=int, default=None, help="tokens per row (T)")
        _flag(parser, "k", type=int, default=128, help="top-k width stored per token")
        _flag(parser, "hidden_layers", type=int, nargs="*", default=None,
              help="teacher layers to store (1-based block counts; default L//2; none: pass the flag empty)")
        _flag(parser, "profile", default="exact", help="store precision profile: exact|compact")
        _flag(parser, "rows_per_unit", type=int, default=64,
              help="rows per work unit (the commit / resume granularity)")
        _flag(parser, "batch_size", type=int, default=8, help="rows per teacher call")
        _flag(parser, "teacher_dtype", default=None,
              help="teacher compute dtype override (float32|bfloat16); default: the checkpoint's")
        _flag(parser, "top_p", type=float, default=None, help="optional top-p truncation of the top-k")
        _flag(parser, "heldout_fraction", type=float, default=0.0,
              help="fraction of documents (by text hash) sent to --heldout-store")
        _flag(parser, "heldout_store", default=None, help="tokens-only store for the held-out split")
        _flag(parser, "input_format", default="auto", help="auto|text|jsonl|parquet")
        _flag(parser, "decode_errors", default="strict",
              help="non-UTF-8 input bytes: strict (fail naming the file) | replace (U+FFFD)")
        _flag(parser, "docs_per_chunk", type=int, default=4096,
              help="documents per spine chunk (parallelism only; does not change the store)")
        _flag(parser, "progress_interval", type=float, default=10.0,
              help="seconds between progress lines (0: none)")


def validate(opts):
    """Checks a DumpOptions view; raises OptionsError naming the flag and the fix."""
    # --teacher is optional: without it the dump writes a tokens-only store
    # (k=0), the data for pre-training a teacher with the same trainer.
    for name in ("input", "store", "tokenizer", "seq_len"):
        if not getattr(opts, name):
            raise OptionsError(f"--{name.replace('_', '-')} is required; see `python -m pipelines.dump --help`")
    positive = {"seq_len": opts.seq_len, "k": opts.k, "rows_per_unit": opts.rows_per_unit,
                "batch_size": opts.batch_size, "docs_per_chunk": opts.docs_per_chunk}
    for name, value in positive.items():
        if value is None or value < 1:
            raise OptionsError(f"--{name.replace('_', '-')}={value} must be a positive integer")
    if not 0.0 <= opts.heldout_fraction < 1.0:
        raise OptionsError(f"--heldout-fraction={opts.heldout_fraction} must be in [0, 1)")
    if opts.heldout_fraction > 0 and not opts.heldout_store:
        raise OptionsError("--heldout-fraction > 0 needs --heldout-store URL for the held-out rows")
    if opts.heldout_store and opts.heldout_fraction == 0:
        raise OptionsError("--heldout-store is set but --heldout-fraction is 0; set a fraction "
                           "(e.g. 0.01) or drop --heldout-store")
    if not opts.teacher and opts.hidden_layers:
        raise OptionsError("--hidden-layers needs --teacher (without a teacher the store holds "
                           "tokens only); pass --teacher CKPT or drop --hidden-layers")
    if opts.heldout_store and opts.heldout_store.rstrip("/") == opts.store.rstrip("/"):
        raise OptionsError("--heldout-store must differ from --store")


def help_text(prog):
    """Usage text of our flags (Beam's own flags are documented by Beam)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Text files -> SentencePiece spine -> teacher signal -> store. "
        "Beam flags (--runner, --direct_num_workers, --direct_running_mode, Dataflow/Flink/Spark "
        "options) pass through; see docs/pipelines.md.")
    DumpOptions._add_argparse_args(parser)
    return parser.format_help()
