"""`python -m pipelines.dump`: text files (or a tokens store) → tokens → teacher signal → store.

    python -m pipelines.dump --input 'data/*.json.gz' --store /data/c4_store \\
        --teacher ckpt/teacher --tokenizer tok.model --seq-len 2048 --k 128 \\
        [--hidden-layers L ...] [--profile exact|compact|lean] [--samples S] [--rows-per-unit R] \\
        [--batch-size B] [--heldout-fraction F --heldout-store URL] [--token-logprob on|off|auto] \\
        [Beam options]
    python -m pipelines.dump --input-store ROUND/rollouts --store ROUND/scored --teacher ckpt/teacher ...

`--input-store` scores the rows of a tokens store as they are (on-policy
rollouts: row r out = row r in, the loss_mask copied; pipelines.store_input).

Beam options (`--runner`, `--direct_num_workers`, `--direct_running_mode`,
Dataflow/Flink/Spark flags, `--runner dask --dask_client_address HOST:PORT`)
pass through; the DirectRunner is the default. Rerunning the same command
resumes: committed units are skipped. See docs/pipelines.md.
"""

import dataclasses
import logging
import sys

# Light imports only at the top: `--help` and bad flags are answered before
# Beam, TensorStore or JAX load (seconds each); the rest is imported where used.
from pipelines import errors, options


def _user_errors():
    """Errors from the packages we call that carry a one-line user message (their
    subclasses are recognised too: pipelines.errors.find_pipeline_error). Imported
    here, not at the top: `--help` and bad flags are answered before these stacks load."""
    import store
    from trainer.model import tokenizer
    from trainer.model.errors import ConfigError, ModelInputError, ModelIOError

    return (store.StoreError, ConfigError, ModelInputError, ModelIOError, tokenizer.TokenizerError)


@dataclasses.dataclass
class DumpResult:
    """What a finished run did.

    Attributes:
        plan: the DumpPlan it ran.
        counters: {name: value}. From the stores' ledgers, so retried or
            re-executed work never counts twice: units_committed (by this
            run), units_already_committed (before it), rows, tokens,
            bytes_written (encoded, of this run's units), and heldout_* the
            same for the held-out store. From Beam's counters where the
            runner reports them (the Dask runner does not): documents,
            heldout_documents, spine_tokens, and other namespaces'
            counters as "namespace.name" — attempts, which a retry repeats.
        progress_lines: progress lines printed during the run.
    """

    plan: object  # pipelines.plan.DumpPlan
    counters: dict
    progress_lines: list


def _existing_writer(url):
    """A writer of the store at `url`, or None when there is no store yet."""
    import store

    try:
        return store.open_writer(url)
    except store.StoreNotFoundError:
        return None


def committed_units(url, writer=None):
    """The units committed in the store at `url` now (empty if there is no store yet)."""
    writer = writer or _existing_writer(url)
    return frozenset(writer.committed_units()) if writer is not None else frozenset()


def _handler(opts, plan, encode_profile=None):
    """The teacher's model handler; `encode_profile`: an existing store's profile rules
    (a compact store from before id packing keeps plain ids), None: the current rules."""
    from pipelines.teacher_handler import TeacherModelHandler  # imports JAX: only with --teacher

    return TeacherModelHandler(
        opts.teacher,
        k=opts.k,
        layers=plan.hidden_layers,
        batch_size=opts.batch_size,
        top_p=opts.top_p,
        samples=opts.samples,
        rows_per_unit=opts.rows_per_unit,
        dtype=opts.teacher_dtype,
        token_tile=opts.token_tile,
        share_across_processes=opts.share_across_processes,
        num_devices=opts.num_devices or None,
        encode_for=plan.schema,
        encode_profile=encode_profile,
        token_logprob=plan.schema.token_logprob,
    )


def build_pipeline(argv, read_ledgers=True):
    """Parses argv, validates it and builds (but does not run) the pipeline.

    Args:
        argv: command-line arguments (ours and Beam's).
        read_ledgers: read the target stores' committed units (the units the
            run skips) and the existing store's profile rules. False builds a
            graph to inspect or translate without touching the stores (it
            would rewrite committed units if run, and encode a compact store
            written before id packing with the current rules).

    Returns:
        (beam.Pipeline, DumpPlan, DumpOptions view).
    """
    import apache_beam as beam

    from pipelines import plan as plan_lib
    from pipelines import spine, teacher_stage
    from store import profiles

    pipeline_options, opts = options.parse(argv)
    plan = plan_lib.make_plan(opts)
    encode_profile = None
    if read_ledgers:
        # The units to skip are fixed here, once: every execution of the
        # graph's stages must agree on them (see teacher_stage.PrepareStore).
        # One open of the store gives them and its profile rules.
        writer = _existing_writer(opts.store)
        if writer is not None:
            encode_profile = profiles.for_store(plan.schema, writer.manifest)
        plan = dataclasses.replace(
            plan,
            committed_before=committed_units(opts.store, writer),
            heldout_committed_before=(
                committed_units(opts.heldout_store)
                if plan.heldout_schema is not None
                else frozenset()
            ),
        )

    pipeline = beam.Pipeline(options=pipeline_options)
    if plan.input_store is not None:
        from pipelines import store_input

        units = pipeline | "ReadStoreUnits" >> store_input.ReadStoreUnits(
            plan.input_store,
            opts.rows_per_unit,
            teacher_stage.PrepareStore(
                opts.store, plan.schema, plan.committed_before, split=opts.split
            ),
        )
        _ = units | "TeacherSignal" >> teacher_stage.WriteTeacherSignal(
            opts.store, _handler(opts, plan, encode_profile), opts.units_per_call
        )
        return pipeline, plan, opts
    chunks = pipeline | "ReadSpine" >> spine.ReadSpine(
        plan.paths,
        plan.model_bytes,
        opts.heldout_fraction,
        opts.input_format,
        opts.decode_errors,
        opts.docs_per_chunk,
    )
    units = chunks[spine.TRAIN] | "PackUnits" >> spine.PackUnits(
        opts.seq_len,
        opts.rows_per_unit,
        teacher_stage.PrepareStore(
            opts.store, plan.schema, plan.committed_before, split=opts.split
        ),
    )
    if plan.teacher_cfg is None:
        written = [units | "WriteTokens" >> teacher_stage.WriteTokensOnly(opts.store)]
    else:
        written = [
            units
            | "TeacherSignal"
            >> teacher_stage.WriteTeacherSignal(
                opts.store, _handler(opts, plan, encode_profile), opts.units_per_call
            )
        ]
    if plan.heldout_schema is not None:
        written.append(
            chunks[spine.HELDOUT]
            | "PackHeldout"
            >> spine.PackUnits(
                opts.seq_len,
                opts.rows_per_unit,
                teacher_stage.PrepareStore(
                    opts.heldout_store,
                    plan.heldout_schema,
                    plan.heldout_committed_before,
                    "held-out store",
                    split="heldout",
                ),
            )
            | "WriteHeldout" >> teacher_stage.WriteTokensOnly(opts.heldout_store)
        )
    # One sink that depends on every write: a runner that computes only the
    # graph's last node (the Dask runner does) still runs all of them.
    tuple(written) | "AllWritten" >> beam.Flatten()
    return pipeline, plan, opts


def _ledger_counters(url, before, prefix=""):
    """Counts from the commit ledger, then compacts it (the launcher is the one compactor).

    The snapshot makes every later open of the store cost a few requests
    instead of one listing of every unit record (store/snapshot.py).
    """
    import store
    from store import profiles

    writer = store.open_writer(url)
    writer.compact()
    new = writer.committed_units() - before
    rows = sum(stop - start for start, stop in map(writer.unit_rows, new))
    schema = writer.schema
    # Encoded (pre-compression) bytes per row of every array of the store.
    row_bytes = sum(s.row_bytes for s in profiles.get_profile(schema.profile).arrays(schema))
    return {
        prefix + "units_committed": len(new),
        prefix + "units_already_committed": len(before),
        prefix + "rows": rows,
        prefix + "tokens": rows * schema.seq_len,
        prefix + "bytes_written": rows * row_bytes,
    }


def _beam_counters(result):
    from apache_beam.metrics.metric import MetricsFilter

    from pipelines import spine

    totals = {}
    try:
        metrics = result.metrics().query(MetricsFilter())
    except NotImplementedError:  # the Dask runner reports none; the run itself succeeded
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
    from pipelines import progress

    pipeline, plan, opts = build_pipeline(argv)
    with progress.ProgressReporter(opts.store, opts.progress_interval) as reporter:
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as e:  # whatever the runner wraps a worker's error in; re-raised below
            if _is_interrupt(e):  # Ctrl-C inside a DoFn: Beam re-raises it as a RuntimeError
                raise KeyboardInterrupt from None
            user_error = errors.find_pipeline_error(e, _user_errors())
            if user_error is None:
                raise
            if isinstance(user_error, errors.StoreWriteError):
                user_error = errors.StoreWriteError(
                    f"{errors.clean_message(user_error)}; {_committed_summary(opts)}; "
                    "fix the storage and re-run the same command to resume"
                )
            raise user_error from None
    counters = _beam_counters(result)
    counters.update(_ledger_counters(opts.store, plan.committed_before))
    if plan.heldout_schema is not None:
        counters.update(
            _ledger_counters(opts.heldout_store, plan.heldout_committed_before, "heldout_")
        )
    return DumpResult(plan, counters, reporter.lines)


def _is_interrupt(exc):
    """True if a runner's exception is a wrapped KeyboardInterrupt (SIGINT in a DoFn)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt) or str(exc).startswith("KeyboardInterrupt"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# Below this a held-out log-perplexity mostly measures which documents the
# hash happened to pick (and a 7-document split of 72 passed without a word).
MIN_HELDOUT_DOCUMENTS = 100
# The same floor in tokens, for runners that report no document counter
# (Dask): ~100 documents of ~200 tokens.
MIN_HELDOUT_TOKENS = 20_000


def heldout_warning(counters):
    """A warning line if the run's held-out split is too small to evaluate on, else None.

    Args:
        counters: DumpResult.counters.
    """
    if "heldout_tokens" not in counters:
        return None
    documents = counters.get("heldout_documents")  # absent where the runner reports no metrics
    tokens = counters["heldout_tokens"]
    if documents is not None and documents >= MIN_HELDOUT_DOCUMENTS:
        return None
    if documents is None and tokens >= MIN_HELDOUT_TOKENS:
        return None
    if documents is None:
        size = f"{tokens} tokens"
    else:
        size = f"{documents} documents of {documents + counters['documents']} ({tokens} tokens)"
    return (
        f"warning: the held-out split has {size}, too few for a stable held-out "
        f"log-perplexity (want >= {MIN_HELDOUT_DOCUMENTS} documents); raise "
        "--heldout-fraction or add text"
    )


def _committed_summary(opts):
    """ "3/40 units of /data/store are committed" for each store of the run."""
    import store

    parts = []
    for url in filter(None, (opts.store, opts.heldout_store)):
        try:
            writer = store.open_writer(url)
        except store.StoreNotFoundError:
            parts.append(f"{url} was not created")
            continue
        parts.append(
            f"{len(writer.committed_units())}/{writer.num_units} units of {url} are committed"
        )
    return ", ".join(parts)


def main(argv=None):
    """CLI entry point (`hd-dump`, `python -m pipelines.dump`); returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(options.help_text("python -m pipelines.dump"))
        return 0
    try:
        # Our own flags first, without Beam: a bad one fails in a fraction of a second.
        precheck = options.precheck(argv)
    except errors.PipelineError as e:
        print(f"error: {errors.clean_message(e)}", file=sys.stderr)
        return 2
    try:
        return _run(argv)
    except KeyboardInterrupt:
        # Committed units are durable and skipped by a re-run; Beam's threads
        # and worker processes are abandoned with the process.
        print(
            f"interrupted: {_interrupted_summary(precheck)}; re-run the same command to "
            "resume (committed units are skipped)",
            file=sys.stderr,
            flush=True,
        )
        return 130


def _interrupted_summary(precheck):
    try:
        return _committed_summary(precheck)
    except Exception:  # noqa: BLE001 -- a summary must not hide the interrupt itself
        return "the committed units are kept"


def _run(argv):
    user_errors = (errors.PipelineError,) + _user_errors()
    # Beam logs a DoFn's exception with its traceback before re-raising it;
    # for bad input the one line below is the whole story.
    beam_log = logging.getLogger("apache_beam.runners.common")
    beam_log.addFilter(errors.DropUserErrorTracebacks(user_errors))
    # Ctrl-C inside a DoFn is logged the same way (~200 lines); main() prints one.
    beam_log.addFilter(lambda record: not (record.exc_info and _is_interrupt(record.exc_info[1])))
    try:
        result = run_dump(argv)
    except user_errors as e:
        print(f"error: {errors.clean_message(e)}", file=sys.stderr)
        return 2
    counters = " ".join(f"{k}={v}" for k, v in sorted(result.counters.items()))
    print(f"dump finished: {counters}")
    warning = heldout_warning(result.counters)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def _protect_imports():
    """trainer.model.cli_guard for `python -m pipelines.dump` (the import itself can be hidden)."""
    try:
        from trainer.model import cli_guard
    except ImportError:  # ./trainer in the working directory hides ours
        sys.exit(
            "error: ./trainer in the working directory hides this project's `trainer` "
            "package under `python -m`; run the installed `hd-dump` command or run from "
            "another directory"
        )
    cli_guard.protect()


if __name__ == "__main__":
    _protect_imports()
    sys.exit(main())
