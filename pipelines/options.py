"""Command-line options of the dump pipeline, as a Beam PipelineOptions view.

Our flags live next to Beam's own (`--runner`, `--direct_num_workers`,
`--project`, `--sdk_container_image`, ...), so one argv configures both and
runner flags pass through untouched. Each flag accepts both spellings
(`--seq-len` and `--seq_len`): users type dashes, while Beam re-serialises
options for remote workers with the underscore `dest` names.

An argument that is neither ours nor Beam's is refused (Beam alone would
log "Discarding unparseable args" and go on): a shell-expanded unquoted glob
after a flag other than `--input` would otherwise drop files silently.
"""

import argparse
import importlib
import os

from pipelines.errors import OptionsError

# Short --runner names for runners Beam does not know by a short name.
RUNNER_ALIASES = {
    "dask": "apache_beam.runners.dask.dask_runner.DaskRunner",
    "daskrunner": "apache_beam.runners.dask.dask_runner.DaskRunner",
}

# Flags that only mean something with --teacher (refused in a tokens-only dump).
TEACHER_FLAGS = (
    "k",
    "samples",
    "profile",
    "top_p",
    "teacher_dtype",
    "batch_size",
    "num_devices",
    "token_tile",
    "units_per_call",
    "share_across_processes",
    "token_logprob",
)
# Flags of the text spine, refused with --input-store (its rows come tokenized and packed).
TEXT_FLAGS = (
    "input",
    "tokenizer",
    "input_format",
    "decode_errors",
    "docs_per_chunk",
    "heldout_fraction",
    "heldout_store",
)
TOKEN_LOGPROB_CHOICES = ("auto", "on", "off")


def _flag(parser, name, **kwargs):
    dashed = "--" + name.replace("_", "-")
    names = [dashed, "--" + name] if "_" in name else [dashed]
    parser.add_argument(*names, dest=name, **kwargs)


class _Flags:
    """Our flags: on Beam's parser (DumpOptions) and on a plain one (--help, precheck)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        _flag(
            parser,
            "input",
            action="extend",
            nargs="+",
            default=None,
            help="input files or globs (several, and repeatable): .txt, .jsonl[.gz], .parquet",
        )
        _flag(
            parser,
            "input_store",
            default=None,
            help="a tokens store to score instead of text (e.g. a round's rollouts): row r of "
            "--store is row r of it, its loss_mask copied; no --input/--tokenizer (its "
            "tokenizer is checked against the teacher's); needs --teacher",
        )
        _flag(parser, "store", default=None, help="output store URL (path, file://, gs://, s3://)")
        _flag(
            parser,
            "teacher",
            default=None,
            help="teacher: a model checkpoint (teacher_dump.convert output, a run's export/) or "
            "a finished trainer run directory (its export/ is used); omit it for a "
            "tokens-only store (k=0), e.g. to pre-train a teacher",
        )
        _flag(parser, "tokenizer", default=None, help="SentencePiece .model file")
        _flag(parser, "seq_len", type=int, default=None, help="tokens per row (T)")
        _flag(
            parser,
            "k",
            type=int,
            default=128,
            help="top-k width stored per token (0: none, with --samples > 0, "
            "--token-logprob on or --hidden-layers L: a rollout store for OPD / OPRD)",
        )
        _flag(
            parser,
            "samples",
            type=int,
            default=0,
            help="teacher draws per position stored as sampled ids + counts (sampled "
            "logits, 0..255; 0: none), keyed by store row and position",
        )
        _flag(
            parser,
            "token_logprob",
            default="auto",
            choices=TOKEN_LOGPROB_CHOICES,
            help="store token_logprob, the teacher's log-prob of each realized next token "
            "(float32, 4 B/token): on | off | auto (on iff --input-store has a loss_mask: "
            "rollouts, where on-policy distillation's single-sample estimator needs it)",
        )
        _flag(
            parser,
            "hidden_layers",
            type=int,
            nargs="*",
            default=None,
            help="teacher layers to store (1-based block counts; default L//2; none: pass the flag empty)",
        )
        _flag(
            parser, "profile", default="exact", help="store precision profile: exact|compact|lean"
        )
        _flag(
            parser,
            "rows_per_unit",
            type=int,
            default=64,
            help="rows per work unit (the commit / resume granularity)",
        )
        _flag(parser, "batch_size", type=int, default=8, help="rows per teacher device call")
        _flag(
            parser,
            "num_devices",
            type=int,
            default=1,
            help="local devices per worker process to split each batch over (params "
            "replicated; --batch-size must divide evenly); 0: all of them",
        )
        _flag(
            parser,
            "token_tile",
            type=int,
            default=2048,
            help="tokens per de-embedding tile of the teacher (bounds its logits memory)",
        )
        _flag(
            parser,
            "units_per_call",
            type=int,
            default=1,
            help="work units per RunInference call (host memory holds that many units' signal)",
        )
        _flag(
            parser,
            "share_across_processes",
            action="store_true",
            default=False,
            help="one teacher per machine shared by its worker processes (Beam "
            "multi_process_shared) instead of one per process",
        )
        _flag(
            parser,
            "teacher_dtype",
            default=None,
            help="teacher compute dtype override (float32|bfloat16); default: the checkpoint's",
        )
        _flag(
            parser, "top_p", type=float, default=None, help="optional top-p truncation of the top-k"
        )
        _flag(
            parser,
            "heldout_fraction",
            type=float,
            default=0.0,
            help="fraction of documents (by text hash) sent to --heldout-store",
        )
        _flag(
            parser, "heldout_store", default=None, help="tokens-only store for the held-out split"
        )
        _flag(
            parser,
            "split",
            default="train",
            choices=("train", "heldout"),
            help="what --store's rows are for, recorded in its manifest: train, or heldout (an "
            "evaluation set; `trainer.evaluate --tasks heldout` warns on a train store)",
        )
        _flag(parser, "input_format", default="auto", help="auto|text|jsonl|parquet")
        _flag(
            parser,
            "decode_errors",
            default="strict",
            help="non-UTF-8 input bytes: strict (fail naming the file) | replace (U+FFFD)",
        )
        _flag(
            parser,
            "docs_per_chunk",
            type=int,
            default=4096,
            help="documents per spine chunk (parallelism only; does not change the store)",
        )
        _flag(
            parser,
            "progress_interval",
            type=float,
            default=10.0,
            help="seconds between progress lines (0: none)",
        )


add_flags = _Flags._add_argparse_args


def _dump_options_class():
    """DumpOptions: our flags as a Beam PipelineOptions view (imports Beam, ~2 s)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    class DumpOptions(PipelineOptions):
        """Flags of `python -m pipelines.dump` (see docs/pipelines.md)."""

        @classmethod
        def _add_argparse_args(cls, parser):
            add_flags(parser)

    DumpOptions.__module__ = __name__
    DumpOptions.__qualname__ = "DumpOptions"
    return DumpOptions


def dump_options():
    """The DumpOptions class, built on first use (one per process: Beam collects
    PipelineOptions subclasses to parse argv), so that `--help` and the checks of
    our own flags never wait for Beam's import."""
    cls = globals().get("DumpOptions")
    if cls is None:
        cls = globals()["DumpOptions"] = _dump_options_class()
    return cls


def __getattr__(name):
    # `options.DumpOptions` from outside (and pickle's lookup by name on workers).
    if name == "DumpOptions":
        return dump_options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _runner_module(argv):
    """The --runner value of argv (None if absent), aliases resolved."""
    for i, arg in enumerate(argv):
        if arg == "--runner" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
    return None


def _resolve_runner(argv):
    """argv with a --runner alias replaced by Beam's full path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--runner" and i + 1 < len(out):
            out[i + 1] = RUNNER_ALIASES.get(out[i + 1].lower(), out[i + 1])
        elif arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
            out[i] = "--runner=" + RUNNER_ALIASES.get(name.lower(), name)
    return out


def _import_runner_options(runner):
    # A runner's own options (e.g. --dask_client_address) are registered when
    # its module is imported; Beam imports it only at run time.
    if runner and "." in runner:
        module = runner.rsplit(".", 1)[0]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise OptionsError(
                f"--runner {runner}: cannot import {module} ({e}); install the "
                "runner's package (for Dask: dask[distributed])"
            ) from None


def _unknown_args(argv):
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    dump_options()  # registers our flags with Beam before the scan below
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    return unknown


def _given(argv):
    """dest names of the flags argv spells out (either spelling, `--f=v` too)."""
    names = set()
    for arg in argv:
        if arg.startswith("--"):
            names.add(arg[2:].split("=", 1)[0].replace("-", "_"))
    return names


def parse(argv):
    """Parses a dump's argv (ours and Beam's) after the checks Beam does not make.

    Args:
        argv: command-line arguments.

    Returns:
        (PipelineOptions, DumpOptions view).

    Raises:
        OptionsError: an argument neither we nor Beam know (e.g. the second
            file of an unquoted glob), or a teacher flag without --teacher.
    """
    argv = _resolve_runner(argv)
    _import_runner_options(_runner_module(argv))
    unknown = _unknown_args(argv)
    if unknown:
        first = unknown[0]
        hint = (
            "if it is an input file, pass it after --input (which takes several paths) "
            "or quote the glob: --input '/dir/*.txt'"
            if not first.startswith("-")
            else "see `python -m pipelines.dump --help` and Beam's runner flags"
        )
        raise OptionsError(
            f"unknown argument {first!r}"
            f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; {hint}"
        )
    from apache_beam.options.pipeline_options import PipelineOptions

    pipeline_options = PipelineOptions(argv)
    opts = pipeline_options.view_as(dump_options())
    _check_teacher_flags(opts, argv)
    _check_input_store_flags(opts, argv)
    if opts.teacher:
        opts.teacher = teacher_checkpoint(opts.teacher)
    return pipeline_options, opts


def _check_teacher_flags(opts, argv):
    if not opts.teacher:
        extra = sorted(n for n in _given(argv) if n in TEACHER_FLAGS)
        if extra:
            flags = " ".join("--" + n.replace("_", "-") for n in extra)
            raise OptionsError(
                f"{flags} only apply with --teacher (without it the store holds "
                "tokens only); pass --teacher CKPT or drop them"
            )


def _check_input_store_flags(opts, argv):
    if not opts.input_store:
        return
    extra = sorted(n for n in _given(argv) if n in TEXT_FLAGS)
    if extra:
        flags = " ".join("--" + n.replace("_", "-") for n in extra)
        raise OptionsError(
            f"{flags} read text, but --input-store gives rows already tokenized and packed; "
            "drop them (or drop --input-store to dump text)"
        )
    if not opts.teacher:
        raise OptionsError(
            "--input-store needs --teacher (scoring a tokens store is the teacher's job; "
            "without one the store would only be copied)"
        )


def precheck(argv):
    """The checks of our own flags, before Beam is imported: bad input fails in ~0.1 s.

    Args:
        argv: command-line arguments (ours and Beam's; Beam's are left alone).

    Raises:
        OptionsError: what `validate` and `parse` would refuse in our flags.
    """
    # A malformed value (e.g. --seq-len abc) ends here as argparse does: usage + one line, exit 2.
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.dump", add_help=False, allow_abbrev=False
    )
    add_flags(parser)
    opts, _ = parser.parse_known_args(argv)
    _check_teacher_flags(opts, argv)
    _check_input_store_flags(opts, argv)
    validate(opts)
    return opts


# What a trainer run directory holds (trainer.training.loop); its model is export/.
_RUN_DIR_MARKERS = ("metrics.jsonl", "checkpoints")
_EXPORT_DIR = "export"
_MODEL_METADATA = "metadata.json"


def teacher_checkpoint(teacher):
    """The model checkpoint behind --teacher: itself, or a trainer run directory's export/.

    `python -m trainer.evaluate` and `trainer.export_hf` accept a run
    directory for the model it exported; the dump does the same.

    Raises:
        OptionsError: a run directory whose run has not exported its model yet.
    """
    from apache_beam.io.filesystems import FileSystems  # local paths and gs://, s3:// alike

    def exists(*parts):
        return FileSystems.exists(FileSystems.join(str(teacher), *parts))

    if exists(_MODEL_METADATA):
        return teacher
    if exists(_EXPORT_DIR, _MODEL_METADATA):
        return FileSystems.join(str(teacher).rstrip("/"), _EXPORT_DIR)
    if any(exists(marker) for marker in _RUN_DIR_MARKERS):
        raise OptionsError(
            f"--teacher {teacher} is a trainer run directory with no exported model yet "
            f"({os.path.join(str(teacher), _EXPORT_DIR)} is written when the run finishes); "
            "finish the run by re-running its `python -m trainer` command, or pass a model "
            "checkpoint"
        )
    return teacher


def validate(opts):
    """Checks a DumpOptions view; raises OptionsError naming the flag and the fix."""
    # --teacher is optional: without it the dump writes a tokens-only store
    # (k=0), the data for pre-training a teacher with the same trainer.
    # With --input-store the rows, their tokenizer and T come from that store.
    required = ("store",) if opts.input_store else ("input", "store", "tokenizer", "seq_len")
    for name in required:
        if not getattr(opts, name):
            raise OptionsError(
                f"--{name.replace('_', '-')} is required; see `python -m pipelines.dump --help`"
            )
    if opts.samples is None or not 0 <= opts.samples <= 255:
        raise OptionsError(
            f"--samples={opts.samples} must be in [0, 255] (draws per position; "
            "counts are stored as uint8); 0 for no sampled logits"
        )
    # token_logprob alone is a signal too (auto: decided by the input store, see plan.py),
    # and so are activations asked for by name (--hidden-layers L ...): a k=0 rollout store
    # for OPD (token_logprob) or OPRD (hidden layers) holds no top-k it does not read.
    logprob_may_be_on = opts.token_logprob == "on" or (
        opts.token_logprob == "auto" and bool(opts.input_store)
    )
    if opts.k == 0 and (opts.samples > 0 or logprob_may_be_on or opts.hidden_layers):
        if opts.top_p is not None:
            raise OptionsError(
                "--top-p truncates the top-k but --k is 0; pass --k > 0 or drop --top-p"
            )
    elif opts.k is None or opts.k < 1:
        raise OptionsError(
            f"--k={opts.k} must be a positive integer (0 only with --samples > 0), or 0 "
            "with --token-logprob on and/or --hidden-layers L ... to store only the realized "
            "tokens' log-probs and/or those activations"
        )
    positive = {
        "seq_len": opts.seq_len,
        "rows_per_unit": opts.rows_per_unit,
        "batch_size": opts.batch_size,
        "docs_per_chunk": opts.docs_per_chunk,
        "token_tile": opts.token_tile,
        "units_per_call": opts.units_per_call,
    }
    if opts.input_store and opts.seq_len is None:
        del positive["seq_len"]  # the input store's T
    for name, value in positive.items():
        if value is None or value < 1:
            raise OptionsError(f"--{name.replace('_', '-')}={value} must be a positive integer")
    if opts.num_devices is None or opts.num_devices < 0:
        raise OptionsError(
            f"--num-devices={opts.num_devices} must be >= 1, or 0 for all local devices"
        )
    if not 0.0 <= opts.heldout_fraction < 1.0:
        raise OptionsError(f"--heldout-fraction={opts.heldout_fraction} must be in [0, 1)")
    if opts.heldout_fraction > 0 and not opts.heldout_store:
        raise OptionsError("--heldout-fraction > 0 needs --heldout-store URL for the held-out rows")
    if opts.heldout_store and opts.heldout_fraction == 0:
        raise OptionsError(
            "--heldout-store is set but --heldout-fraction is 0; set a fraction "
            "(e.g. 0.01) or drop --heldout-store"
        )
    if not opts.teacher and opts.hidden_layers:
        raise OptionsError(
            "--hidden-layers needs --teacher (without a teacher the store holds "
            "tokens only); pass --teacher CKPT or drop --hidden-layers"
        )
    if opts.heldout_store and opts.heldout_store.rstrip("/") == opts.store.rstrip("/"):
        raise OptionsError("--heldout-store must differ from --store")
    if opts.input_store and opts.input_store.rstrip("/") == opts.store.rstrip("/"):
        raise OptionsError(
            "--input-store must differ from --store (the scored rows go to a new store)"
        )


def help_text(prog):
    """Usage text of our flags (Beam's own flags are documented by Beam); no Beam import."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Text files -> SentencePiece spine -> teacher signal -> store. "
        "Beam flags (--runner, --direct_num_workers, --direct_running_mode, Dataflow/Flink/Spark "
        "options; --runner dask with --dask_client_address HOST:PORT) pass through; "
        "see docs/pipelines.md. Ctrl-C stops it; the same command resumes.",
    )
    add_flags(parser)
    return parser.format_help()
