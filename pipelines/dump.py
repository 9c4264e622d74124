"""`python -m pipelines.dump`: text files → tokens → teacher signal → store.

    python -m pipelines.dump --input 'data/*.json.gz' --store /data/c4_store \\
        --teacher ckpt/teacher --tokenizer tok.model --seq-len 2048 --k 128 \\
        [--hidden-layers L ...] [--profile exact|compact] [--rows-per-unit R] \\
        [--batch-size B] [--heldout-fraction F --heldout-store URL] [Beam options]

Beam options (`--runner`, `--direct_num_workers`, `--direct_running_mode`,
Dataflow/Flink/Spark flags) pass through; the DirectRunner is the default.
Rerunning the same command resumes: committed units are skipped. See
docs/pipelines.md.
"""
import dataclasses
import logging
import sys

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

import store
from pipelines import errors, options, plan as plan_lib, progress, spine, teacher_stage
from trainer.model import layout, model_config, tokenizer

# Errors from the packages we call that carry a one-line user message.
_USER_ERRORS = (store.StoreError, store.StoreNotFoundError, store.SchemaMismatchError,
                store.IncompleteStoreError, store.CorruptStoreError, store.StoreInputError,
                layout.ModelIOError, model_config.ConfigError, tokenizer.TokenizerError)


def _teacher_errors():
    from teacher_dump import extract, teacher
    from pipelines import teacher_handler as handler
    return (teacher.TeacherLoadError, teacher.DevicePlacementError, extract.ExtractConfigError,
            extract.TokenRangeError, handler.UnitElementError)


@dataclasses.dataclass
class DumpResult:
    """What a finished run did.

    Attributes:
        plan: the DumpPlan it ran.
        counters: {name: value} of the run's Beam counters (documents, rows,
            tokens, units_committed, bytes_written, heldout_*...); counters of
            other namespaces as "namespace.name".
        progress_lines: progress lines printed during the run.
    """
    plan: plan_lib.DumpPlan
    counters: dict
    progress_lines: list


def build_pipeline(argv):
    """Parses argv, validates it and builds (but does not run) the pipeline.

    Args:
        argv: command-line arguments (ours and Beam's).

    Returns:
        (beam.Pipeline, DumpPlan, DumpOptions view).
    """
    pipeline_options = PipelineOptions(argv)
    opts = pipeline_options.view_as(options.DumpOptions)
    plan = plan_lib.make_plan(opts)

    pipeline = beam.Pipeline(options=pipeline_options)
    chunks = pipeline | "ReadSpine" >> spine.ReadSpine(
        plan.paths, plan.model_bytes, opts.heldout_fraction, opts.input_format,
        opts.decode_errors, opts.docs_per_chunk)
    units = chunks[spine.TRAIN] | "PackUnits" >> spine.PackUnits(
        opts.seq_len, opts.rows_per_unit, teacher_stage.PrepareStore(opts.store, plan.schema))
    if plan.teacher_cfg is None:
        units | "WriteTokens" >> teacher_stage.WriteTokensOnly(opts.store, metric_prefix="")
    else:
        from pipelines.teacher_handler import TeacherModelHandler  # Beam-side of teacher_dump
        handler = TeacherModelHandler(
            opts.teacher, k=opts.k, layers=plan.hidden_layers, batch_size=opts.batch_size,
            top_p=opts.top_p, dtype=opts.teacher_dtype)
        units | "TeacherSignal" >> teacher_stage.WriteTeacherSignal(opts.store, handler)
    if plan.heldout_schema is not None:
        (chunks[spine.HELDOUT]
         | "PackHeldout" >> spine.PackUnits(
             opts.seq_len, opts.rows_per_unit,
             teacher_stage.PrepareStore(opts.heldout_store, plan.heldout_schema, "held-out store",
                                        metric_prefix="heldout_"))
         | "WriteHeldout" >> teacher_stage.WriteTokensOnly(opts.heldout_store))
    return pipeline, plan, opts


def _counters(result):
    totals = {}
    try:
        metrics = result.metrics().query(MetricsFilter())
    except Exception:  # some runners do not report metrics; the run itself succeeded
        return totals
    for counter in metrics["counters"]:
        # Our counters by bare name; other namespaces' (teacher_dump, Beam's
        # RunInference) qualified so that equal names do not add up.
        name = counter.key.metric.name
        if counter.key.metric.namespace != spine.METRICS_NAMESPACE:
            name = f"{counter.key.metric.namespace}.{name}"
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + (value or 0)
    return totals


def run_dump(argv):
    """Builds and runs the dump; blocks until it finishes.

    Args:
        argv: command-line arguments (ours and Beam's).

    Returns:
        DumpResult

    Raises:
        ValueError subclasses with a one-line message for bad input (see
        `pipelines.errors`, `store.errors`); other exceptions are bugs.
    """
    pipeline, plan, opts = build_pipeline(argv)
    with progress.ProgressReporter(opts.store, opts.progress_interval) as reporter:
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as e:
            user_error = errors.find_pipeline_error(e, _USER_ERRORS + _teacher_errors())
            if user_error is None:
                raise
            raise user_error from None
    return DumpResult(plan, _counters(result), reporter.lines)


def main(argv=None):
    """CLI entry point; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(options.help_text("python -m pipelines.dump"))
        return 0
    user_errors = (errors.PipelineError,) + _USER_ERRORS + _teacher_errors()
    # Beam logs a DoFn's exception with its traceback before re-raising it;
    # for bad input the one line below is the whole story.
    logging.getLogger("apache_beam.runners.common").addFilter(
        errors.DropUserErrorTracebacks(user_errors))
    try:
        result = run_dump(argv)
    except user_errors as e:
        print(f"error: {errors.clean_message(e)}", file=sys.stderr)
        return 2
    counters = " ".join(f"{k}={v}" for k, v in sorted(result.counters.items()))
    print(f"dump finished: {counters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
