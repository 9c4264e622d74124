"""The trainer: one jitted step for every method/phase, and the resumable loop.

    summary = run(config)     # what `python -m trainer` calls

Order of work in `run`: validate the config → open the store and check its
alignment with the config (before anything compiles) → plan steps from the
one FLOPs budget → mesh → own run_dir (trainer.training.run_lock; nothing is
written there before) → restore the newest checkpoint if any → phases
(HLDF: 1 then 2) → export the student (no regressor) to RUN_DIR/export.
A live teacher (`teacher.checkpoint`) is checked against the store and the
student with the store (before compiling), loaded once the run dir is owned,
and passed to every step as an argument (trainer.training.live_teacher).
SIGINT/SIGTERM checkpoint the current step and stop (trainer.training.interrupt);
a re-run after a failed export exports from the final checkpoint, training nothing.

HLDF phase 2 starts from the phase-1 student weights with a FRESH optimizer
state and its own WSD schedule: phase-1 moments exist only for the first
half and the MLP regressor (which phase 2 drops), and its constant-LR phase
has no decay to continue; restarting AdamW is what "KD on the whole student
starting from the phase-1 weights" means in the paper. The data iterator
continues (phase 2 never re-reads phase-1 batches).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import time

import chex
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from store import StoreReader
from store import objective_penalty as penalty_lib
from trainer import flops
from trainer.model import gemma3 as model
from trainer.model import model_config, model_io
from trainer.training import (
    checkpoint,
    data,
    decode,
    distributed,
    hidden_share,
    layer_match,
    live_teacher,
    memory,
    methods,
    metrics,
    microbatch,
    phase_loss,
    run_lock,
    sharding,
    store_align,
)
from trainer.training import (
    config as config_lib,
)
from trainer.training import (
    state as train_state,
)
from trainer.training.interrupt import StopOnSignal, TrainingInterrupted  # noqa: F401 (API)


class TrainingDivergedError(ValueError):
    """The loss became NaN/Inf; training stopped, the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhasePlan:
    """A phase and what it costs."""

    phase: methods.Phase
    num_steps: int
    flops_per_token: float
    # The live teacher's forward FLOPs per token of this phase (0: none), in
    # flops_per_token too iff teacher.charge_flops.
    teacher_flops_per_token: float = 0.0


def model_config_from(config) -> model_config.ModelConfig:
    """The student ModelConfig named by `config.model`."""
    return model_config.get_config(
        config.model.name,
        vocab_size=config.model.vocab_size,
        dtype=config.model.dtype,
        remat=config.model.remat,
    )


def stored_needs(phases) -> dict:
    """{needs_topk, needs_hidden}: the teacher signals the phases read from the store
    (none of them with a live teacher)."""
    return {
        "needs_topk": any(p.kd_term and not p.live for p in phases),
        "needs_hidden": any(p.hidden_term and not p.live for p in phases),
    }


def check_store(config, reader: StoreReader, model_cfg, phases) -> None:
    """Alignment of store, config and live teacher: one error listing every mismatch."""
    del model_cfg  # Its vocab is config.model.vocab_size, which store_align checks.
    store_align.check_store(config, reader.schema, config.store.url, **stored_needs(phases))
    if any(p.onpolicy for p in phases) and not reader.schema.loss_mask:
        raise config_lib.ConfigError(
            f"store {config.store.url} has no loss_mask, so {config.method} would train on every "
            f"token as a completion; pass rollouts (python -m trainer.generate --out, or "
            f"python -m trainer.rounds), or use method=kd on corpus text"
        )
    if live_teacher.enabled(config):
        live_teacher.check_compatible(
            config,
            live_teacher.teacher_config(config),
            live_teacher.metadata_of(config),
            reader.schema.tokenizer.get("sha256"),
            hidden=any(p.hidden_term for p in phases),
        )


def open_store(config) -> tuple[StoreReader, object]:
    """The run's store and the resolved config (frozen; the store's geometry with data.from_store)."""
    reader = StoreReader(
        config_lib.resolve_local_path(config.store.url), allow_partial=config.store.allow_partial
    )
    phases = methods.phases(config, model_config_from(config).num_layers)  # Phases need L, not V.
    needs = stored_needs(phases)
    resolved = store_align.resolve(config, reader.schema, **needs)
    if config.data.from_store and needs["needs_topk"] and jax.process_index() == 0:
        print(f"data.from_store: {store_align.signal_choice(resolved, reader.schema)}", flush=True)
    return reader, resolved


def flop_counts(config, model_cfg, teacher_cfg=None) -> dict:
    """trainer.flops.model_flops of the student with this config's regressor widths
    (and its live teacher's forward, charged per teacher.charge_flops). `teacher_cfg`:
    the live teacher's ModelConfig when known without teacher.checkpoint (trainer.plan's
    `--teacher NAME`); None reads it from the checkpoint's config.json."""
    return flops.model_flops(
        model_cfg,
        teacher_d_model=config.teacher.d_model or None,
        seq_len=config.data.seq_len,
        teacher_cfg=teacher_cfg or live_teacher.model_config_of(config),
        charge_teacher=config.teacher.charge_flops,
        **layer_match.hidden_flops_args(config, model_cfg.num_layers),
    )


def phase_flops_per_token(config, model_cfg, phase: methods.Phase) -> float:
    """Training FLOPs per token of a phase (docs/DESIGN.md §1)."""
    return flop_counts(config, model_cfg)["flops_per_token"][phase.flops_method]


def budget_flops(config, counts: dict) -> float:
    """The config's one budget in FLOPs (OT units converted by trainer.flops)."""
    if config.budget.unit == config_lib.BudgetUnit.OT.value:
        return flops.ot_budget_flops(counts, config.budget.value)
    return float(config.budget.value)


MAX_STEPS = 2**31 - 1  # The train state's step counter is int32.


def plan_phases(config, model_cfg, phases, teacher_cfg=None) -> tuple[PhasePlan, ...]:
    """Steps per phase from the one budget (trainer.flops), HLDF split by hldf.p1
    (`teacher_cfg`: as flop_counts')."""
    tokens_per_step = config.data.batch_size * config.data.seq_len
    counts = flop_counts(config, model_cfg, teacher_cfg)
    step_plan = flops.plan_steps(
        budget_flops(config, counts),
        config.method,
        tokens_per_step,
        p1=config.hldf.p1,
        counts=counts,
        costs=tuple(p.flops_method for p in phases),
    )
    live = counts["teacher_forward"]
    plans = []
    for phase, n, cost in zip(phases, step_plan, step_plan.phase_costs):
        if cost != phase.flops_method:
            raise AssertionError(f"flops phase {cost} != trainer phase {phase.flops_method}")
        if n < 1:
            raise config_lib.ConfigError(
                f"budget {config.budget.value:g} {config.budget.unit} gives {n} steps for phase "
                f"{phase.index} of {config.method}; raise budget.value"
            )
        if n > MAX_STEPS:  # E.g. budget.value=1e30: the schedules' int32 step would overflow.
            raise config_lib.ConfigError(
                f"budget {config.budget.value:g} {config.budget.unit} gives {n:.3g} steps for phase "
                f"{phase.index} of {config.method}, more than the {MAX_STEPS} a run can count; "
                f"lower budget.value"
            )
        plans.append(
            PhasePlan(
                phase=phase,
                num_steps=int(n),
                flops_per_token=counts["flops_per_token"][phase.flops_method],
                teacher_flops_per_token=(
                    live["flops_per_token"][phase.flops_method] if live and phase.live else 0.0
                ),
            )
        )
    return tuple(plans)


def make_train_step(
    config,
    model_cfg,
    plan: PhasePlan,
    optimizer,
    lr_schedule,
    mesh,
    state_shardings,
    batch_keys_ndim: dict,
    encoding: decode.Encoding,
    teacher_cfg=None,
    teacher_shardings=None,
):
    """The jitted step: (state, batch) -> (state, metrics); state is donated.

    The batch holds the store's arrays as stored; `encoding` is how loss_fn
    decodes them on the device (a static of the trace). A live-teacher phase's
    step takes the teacher's params as a third argument, (state, batch,
    teacher_params), sharded by `teacher_shardings` (never donated, no gradient).

    Traced once per phase (`chex.assert_max_traces`): a second trace would
    mean a silent recompile (e.g. a shape or dtype drift in the batch).
    """
    phase = plan.phase

    def step_fn(state: train_state.TrainState, batch, teacher_params=None):
        def loss_of(trainables, part, counts):
            return phase_loss.loss_fn(
                trainables["params"],
                trainables["regressor"],
                part,
                state.step,
                phase=phase,
                config=config,
                model_cfg=model_cfg,
                num_steps=plan.num_steps,
                encoding=encoding,
                counts=counts,
                teacher_params=teacher_params,
                teacher_cfg=teacher_cfg,
            )

        with sharding.activation_sharding(mesh):
            (_, step_metrics), grads = microbatch.value_and_grad(
                loss_of,
                state.trainables,
                batch,
                config.data.micro_batches,
                mesh=mesh,
                counts_fn=lambda b: phase_loss.token_counts(b, phase),
                constant_metrics=phase_loss.CONSTANT_METRICS,
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainables)
        new = jax.tree.map(lambda p, u: p + u, state.trainables, updates)
        step_metrics["grad_norm"] = jnp.sqrt(
            sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads))
        )
        step_metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        new_state = state.replace(
            step=state.step + 1,
            params=new["params"],
            regressor=new["regressor"],
            opt_state=opt_state,
        )
        return new_state, step_metrics

    # chex keys its trace counter on the function's name and source; a unique
    # name gives every built step (one per phase, or per test) its own budget of 1.
    step_fn.__name__ = f"train_step_phase{phase.index}_{next(_STEP_IDS)}"
    step_fn = chex.assert_max_traces(step_fn, n=1)
    batch_shardings = {k: sharding.batch_sharding(mesh, nd) for k, nd in batch_keys_ndim.items()}
    in_shardings: tuple = (state_shardings, batch_shardings)
    if phase.live:
        in_shardings += (teacher_shardings,)
    return jax.jit(
        step_fn,
        in_shardings=in_shardings,
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


_STEP_IDS = itertools.count()


class TeacherBoundStep:
    """A live-teacher step called as (state, batch), like every other phase's step.

    The jitted function takes the teacher's params as its third argument;
    this binds them, so the loop, the memory guard, the bench and
    `trainer.plan` call and `.lower(state, batch)` it unchanged. Params may be
    ShapeDtypeStructs (`live_teacher.abstract_params`) for lowering only.
    """

    def __init__(self, jitted, teacher_params):
        self.jitted, self.teacher_params = jitted, teacher_params

    def __call__(self, state, batch):
        return self.jitted(state, batch, self.teacher_params)

    def lower(self, state, batch):
        return self.jitted.lower(state, batch, self.teacher_params)


class PhaseRunner:
    """Builds the optimizer, shardings and step of one phase (also used by the bench).

    `encoding` (the store's, `decode.Encoding.from_reader`) fixes the batch's
    stored arrays and how the step decodes them; the default `decode.EXACT`
    takes exact-profile arrays (e.g. `data.synthetic_batch`). `teacher` is the
    run's `live_teacher.LiveTeacher`, needed by a live-teacher phase.
    """

    def __init__(
        self,
        config,
        model_cfg,
        plan: PhasePlan,
        mesh,
        encoding: decode.Encoding = decode.EXACT,
        teacher: live_teacher.LiveTeacher | None = None,
    ):
        self.config, self.model_cfg, self.plan, self.mesh = config, model_cfg, plan, mesh
        phase = plan.phase
        opt = config.optim
        self.lr_schedule = methods.lr_schedule(config, phase, plan.num_steps)
        mask = None
        if phase.num_blocks is not None:
            shapes = jax.eval_shape(lambda k: model.init_params(model_cfg, k), jax.random.key(0))
            mask = train_state.first_half_mask(shapes, phase.num_blocks)
        self.optimizer = train_state.make_optimizer(
            self.lr_schedule,
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            grad_clip=opt.grad_clip,
            params_mask=mask,
        )
        self.d_teacher = config.teacher.d_model or model_cfg.d_model
        replicated = sharding.replicated(mesh)
        abstract = jax.eval_shape(self._fresh_state, jax.random.key(0))
        self.param_shardings = sharding.tree_shardings(
            model.param_logical_axes(model_cfg), abstract.params, mesh
        )
        reg_axes = layer_match.regressor_logical_axes(phase.regressor, abstract.regressor)
        self.reg_shardings = sharding.tree_shardings(reg_axes, abstract.regressor, mesh)
        self.state_shardings = train_state.state_shardings(
            abstract, self.optimizer, self.param_shardings, self.reg_shardings, replicated
        )
        self.abstract_state = checkpoint.abstract_like(abstract, self.state_shardings)
        self.encoding = encoding
        batch_ndims = decode.BatchSpec(encoding=encoding, fields=phase.fields).ndims
        self.batch_keys = tuple(batch_ndims)
        # What else evaluates the phase's loss (hidden_share) passes to loss_fn too.
        self.teacher_params = self.teacher_cfg = teacher_shardings = None
        if phase.live:
            if teacher is None:
                raise ValueError(
                    "a live-teacher phase needs its teacher: pass teacher=live_teacher.load("
                    "config, mesh) to PhaseRunner"
                )
            self.teacher_params, self.teacher_cfg = teacher.params, teacher.model_cfg
            teacher_shardings = teacher.shardings
        step = make_train_step(
            config,
            model_cfg,
            plan,
            self.optimizer,
            self.lr_schedule,
            mesh,
            self.state_shardings,
            batch_ndims,
            encoding,
            # Only a live phase passes them (make_train_step's signature is otherwise as before).
            **(
                {"teacher_cfg": self.teacher_cfg, "teacher_shardings": teacher_shardings}
                if phase.live
                else {}
            ),
        )
        self.step = TeacherBoundStep(step, self.teacher_params) if phase.live else step

    def _fresh_state(self, rng, params=None):
        # Three keys, as when the state carried one, so inits stay the same.
        p_rng, r_rng, _ = jax.random.split(rng, 3)
        if params is None:
            params = model.init_params(self.model_cfg, p_rng)
        regressor = layer_match.init_regressor(
            self.plan.phase.regressor,
            r_rng,
            self.model_cfg.d_model,
            self.d_teacher,
            layers=self.plan.phase.hidden_layers,
        )
        return train_state.init_state(params, regressor, self.optimizer)

    def init_state(self, rng, params=None) -> train_state.TrainState:
        """A fresh, sharded phase state (params given: continue from them)."""
        init = jax.jit(self._fresh_state, out_shardings=self.state_shardings)
        return init(rng, params)

    def put_batch(self, host_batch: dict) -> dict:
        """Host numpy batch → global sharded arrays with exactly the phase's keys."""
        missing = [k for k in self.batch_keys if k not in host_batch]
        if missing:
            raise ValueError(
                f"batch lacks {missing} needed by this phase; read the store "
                f"with trainer.training.data.StoreSource(url, phase.fields)"
            )
        return sharding.global_batch_from_host(
            {k: host_batch[k] for k in self.batch_keys}, self.mesh
        )


def run(config) -> dict:
    """Trains (or resumes) the run described by `config`; returns the final summary.

    Raises:
        ConfigError, SchemaMismatchError, ...: bad config / store (before compiling).
        RunDirError: run_dir is a file, nests with a store, or another process owns it.
        DeviceMemoryError: a step ran out of device memory (trainer.training.memory).
        TrainingDivergedError: NaN/Inf loss (the last good checkpoint is kept).
        TrainingInterrupted: SIGINT/SIGTERM (a checkpoint of the current step is saved).
    """
    started = time.time()  # final.json's wall_s: this invocation, compiles and export included.
    config_lib.validate(
        config
    )  # The user's settings, once; the store's geometry is valid by its schema.
    distributed.initialize(
        config.distributed, config.distributed_heartbeat_s, config.distributed_init_timeout_s
    )
    reader, config = open_store(config)  # From here on: the resolved, frozen config.
    model_cfg = model_config_from(config)
    phases = methods.phases(config, model_cfg.num_layers)
    check_store(config, reader, model_cfg, phases)
    plans = plan_phases(config, model_cfg, phases)
    methods.check_schedules(config, [(p.phase, p.num_steps) for p in plans])
    # Process 0 alone reports it: the others would read sample rows that are not their share.
    penalty = (
        methods.objective_penalty(config, reader, phases) if jax.process_index() == 0 else None
    )
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    divisor = sharding.batch_divisor(mesh)
    if config.data.batch_size % divisor:
        raise config_lib.ConfigError(
            f"data.batch_size={config.data.batch_size} is not divisible by the mesh's batch "
            f"axes (data×fsdp={divisor}); use a multiple of {divisor}"
        )
    microbatch.check_micro_batches(config.data.micro_batches, config.data.batch_size, divisor)
    lock = run_lock.own_run_dir(config.run_dir, config.store.url)  # Before writing anything.
    try:
        return _owned_run(config, reader, model_cfg, plans, penalty, mesh, started)
    finally:
        lock.release()


def init_params(config, model_cfg):
    """The student's starting params from `model.init_checkpoint` (None: random init).

    Raises:
        ConfigError: unreadable checkpoint, or one of another model config.
    """
    if not config.model.init_checkpoint:
        return None
    try:
        cfg, params, _ = model_io.load_model(config.model.init_checkpoint)
    except model_io.ModelIOError as e:
        raise config_lib.ConfigError(f"model.init_checkpoint: {e}") from None
    # dtype and remat are how the step computes, not what the params are.
    if dataclasses.replace(cfg, dtype=model_cfg.dtype, remat=model_cfg.remat) != model_cfg:
        raise config_lib.ConfigError(
            f"model.init_checkpoint {config.model.init_checkpoint} holds a {cfg.name} model "
            f"(V={cfg.vocab_size}, d={cfg.d_model}) that is not the student's config "
            f"(model.name={config.model.name}, V={model_cfg.vocab_size}); pass its own export"
        )
    return jax.device_get(params)  # Host arrays: init_state's jit lays them out on the mesh.


def _owned_run(config, reader, model_cfg, plans, penalty, mesh, started: float) -> dict:
    """`run` once this process (or process 0 for all) owns run_dir: it alone writes there.

    `started` is run()'s start time (final.json's wall_s).
    """
    run_dir = config.run_dir
    config_lib.check_same_config_on_resume(config, run_dir)
    if jax.process_count() > 1:
        # Every process has read the old config.json before process 0 replaces it.
        multihost_utils.sync_global_devices("trainer: config.json checked")
    if jax.process_index() == 0:
        with open(os.path.join(run_dir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config_lib.to_json(config))
        if penalty is not None:  # The guard: printed before anything compiles or trains.
            print(penalty_lib.describe(penalty), flush=True)
            with open(os.path.join(run_dir, "objective_penalty.json"), "w", encoding="utf-8") as f:
                json.dump(penalty, f, indent=2)

    total_steps = sum(p.num_steps for p in plans)
    tokens_per_step = config.data.batch_size * config.data.seq_len
    ckpt = checkpoint.Checkpointer(run_dir, keep=config.keep_checkpoints)
    meta = {"phase": 1, "phase_step": 0, "global_step": 0, "cumulative_flops": 0.0}
    latest = ckpt.latest_step()
    if latest is not None:
        meta = ckpt.restore_meta(latest)
        if jax.process_index() == 0 and meta["global_step"] < total_steps:
            print(
                f"resuming from step {meta['global_step']} of {total_steps} (checkpoint in "
                f"{ckpt.directory})",
                flush=True,
            )
    resumed_from = meta["global_step"]
    final_path = os.path.join(run_dir, "final.json")
    if meta["global_step"] == total_steps and os.path.exists(final_path):
        # Already finished (e.g. a re-run sweep point): nothing to train or export.
        ckpt.close()
        with open(final_path, encoding="utf-8") as f:
            return json.load(f)
    writer = metrics.MetricsWriter(
        run_dir,
        total_steps,
        enabled=jax.process_index() == 0,
        resume_step=meta["global_step"],
        num_phases=len(plans),
    )
    data_state = None
    params = init_params(config, model_cfg)  # None: random init (phase 1's rng).
    # Loaded once for every phase, after the checks (check_store) and before any compile.
    live = any(p.phase.live for p in plans)
    blocks = live_teacher.blocks_needed([p.phase for p in plans])  # None: its logits are read
    teacher = live_teacher.load(config, mesh, blocks) if live else None
    rng = jax.random.key(config.seed)
    last = {}
    stop = StopOnSignal(meta["global_step"]).install()
    try:
        for plan in plans:
            if plan.phase.index < meta["phase"]:
                continue
            runner = PhaseRunner(
                config, model_cfg, plan, mesh, decode.Encoding.from_reader(reader), teacher
            )
            source = data.StoreSource(
                config.store.url, plan.phase.fields, allow_partial=config.store.allow_partial
            )
            iterator = data.make_iterator(
                source,
                config.data.batch_size,
                config.seed,
                num_threads=config.data.num_threads,
                prefetch_buffer_size=config.data.prefetch_buffer_size,
                num_workers=config.data.num_workers,
            )
            if latest is not None and plan.phase.index == meta["phase"]:
                state, data_state = ckpt.restore(latest, runner.abstract_state)
            else:
                state = runner.init_state(jax.random.fold_in(rng, plan.phase.index), params)
                meta = {**meta, "phase": plan.phase.index, "phase_step": 0}
            if data_state is not None:
                iterator.set_state(data_state)
            state, meta, phase_last = _run_phase(
                config,
                plan,
                runner,
                state,
                iterator,
                ckpt,
                writer,
                meta,
                total_steps,
                tokens_per_step,
                mesh.size,
                stop,
                teacher_flops_before=sum(
                    p.teacher_flops_per_token * p.num_steps * tokens_per_step
                    for p in plans
                    if p.phase.index < plan.phase.index
                ),
            )
            last = phase_last or last
            data_state = iterator.get_state()
            params = state.params
            latest = None
    finally:
        stop.uninstall()
        writer.close()
        ckpt.close()
    if not last and jax.process_index() == 0 and os.path.exists(writer.path):
        # Training had finished before this process (its export failed or was
        # interrupted): the summary's loss terms are the last logged ones.
        last = {k: v for k, v in (metrics.read_metrics(run_dir) or [{}])[-1].items() if k != "step"}
    # Every process takes part in the gather; only process 0 writes. The export is
    # the student alone (state.params): regressors never leave the train state.
    host_params = (
        multihost_utils.process_allgather(params, tiled=True)
        if jax.process_count() > 1
        else jax.device_get(params)
    )
    summary = {
        "method": config.method,
        "global_step": meta["global_step"],
        "cumulative_flops": meta["cumulative_flops"],
        **last,
        # A resumed run counts from its resume (resumed_from_step > 0).
        "resumed_from_step": resumed_from,
        "wall_s": None,
    }
    if teacher is not None:
        summary["teacher"] = teacher_summary(config, teacher, plans, tokens_per_step)
    if jax.process_index() == 0:
        # overwrite: the export is derived from the final checkpoint, so a
        # half-written one (a failed or killed export) is simply written again.
        model_io.save_model(
            os.path.join(run_dir, "export"),
            model_cfg,
            host_params,
            metadata={
                "method": config.method,
                "steps": total_steps,
                "cumulative_flops": meta["cumulative_flops"],
                # The context the model was trained with:
                # evaluation defaults to it and checks stores.
                "seq_len": config.data.seq_len,
                # Lets the pipeline and evaluation refuse a
                # tokenizer this model was not trained with.
                "tokenizer_sha256": reader.schema.tokenizer.get("sha256", ""),
            },
            overwrite=True,
        )
        summary["wall_s"] = round(time.time() - started, 1)
        with open(final_path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return summary


def teacher_summary(config, teacher, plans, tokens_per_step: int) -> dict:
    """What the live teacher cost the run and whether cumulative_flops holds it."""
    charged = bool(config.teacher.charge_flops)
    return {
        "checkpoint": config.teacher.checkpoint,
        "fingerprint": teacher.fingerprint,
        "flops_per_token": [p.teacher_flops_per_token for p in plans],
        "flops": sum(p.teacher_flops_per_token * p.num_steps * tokens_per_step for p in plans),
        "charged": charged,
        "note": (
            "the live teacher's forward is in cumulative_flops (teacher.charge_flops=True)"
            if charged
            else "the live teacher's forward is NOT in cumulative_flops, as in the paper "
            "(teacher.charge_flops=False)"
        ),
    }


def _run_phase(
    config,
    plan,
    runner,
    state,
    iterator,
    ckpt,
    writer,
    meta,
    total_steps,
    tokens_per_step,
    num_devices,
    stop: StopOnSignal,
    teacher_flops_before: float = 0.0,
):
    """Steps one phase to its end; checkpoints, logs; stops on NaN/Inf or a signal.

    `teacher_flops_before`: the live teacher's FLOPs of the phases before this one.
    """
    phase_step = int(meta["phase_step"])
    good_step = ckpt.latest_step()
    flops_per_step = plan.flops_per_token * tokens_per_step
    last = {}
    shares = hidden_share.ShareLog(config, runner)  # HLDC/HLDF: what the hidden term weighs.
    timer_start, timer_steps = None, 0
    while phase_step < plan.num_steps:
        batch = runner.put_batch(next(iterator))
        with memory.on_exhaustion(meta["global_step"] + 1, plan.phase.index):
            state, step_metrics = runner.step(state, batch)
        phase_step += 1
        timer_steps += 1
        global_step = meta["global_step"] + 1
        meta = {
            **meta,
            "phase_step": phase_step,
            "global_step": global_step,
            "cumulative_flops": meta["cumulative_flops"] + flops_per_step,
        }
        end = phase_step == plan.num_steps
        save = end or global_step % config.checkpoint_every == 0
        if end or save or global_step % config.log_every == 0:
            with memory.on_exhaustion(global_step, plan.phase.index):  # Async: surfaces here.
                values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            now = time.perf_counter()
            if timer_start is None:
                # The first logged interval includes compilation: restart the clock.
                timer_start, timer_steps = now, 0
                rate = float("nan")
            else:
                rate = timer_steps * tokens_per_step / (now - timer_start)
            if not all(math.isfinite(v) for v in values.values()):
                bad = sorted(k for k, v in values.items() if not math.isfinite(v))
                raise TrainingDivergedError(
                    f"non-finite {bad} at step {global_step} (phase {plan.phase.index}); the "
                    f"last good checkpoint (step {good_step}) is kept in {ckpt.directory}; "
                    f"lower optim.lr or check the store"
                )
            record = {
                "phase": plan.phase.index,
                **values,
                "cumulative_flops": meta["cumulative_flops"],
                "tokens": global_step * tokens_per_step,
            }
            if plan.phase.live:  # Spent, charged or not; the flag says which.
                record["teacher_flops"] = teacher_flops_before + (
                    phase_step * tokens_per_step * plan.teacher_flops_per_token
                )
                record["teacher_flops_charged"] = float(config.teacher.charge_flops)
            if math.isfinite(rate):
                record["tokens_per_s"] = rate
                record["mfu"] = metrics.mfu(
                    plan.flops_per_token, rate, config.peak_flops_per_device, num_devices
                )
            writer.write(global_step, record)
            if shares.observe(global_step, values, state, batch):  # Its compile: not in tokens/s.
                timer_start, timer_steps = time.perf_counter(), 0
            last = record
            if save:
                ckpt.save(global_step, state, iterator.get_state(), meta)
                good_step = stop.resume_step = global_step
                # Keep checkpoint writes out of the tokens/s measurement.
                timer_start, timer_steps = time.perf_counter(), 0
        # Multi-process runs agree on stopping (a collective, see StopOnSignal) at
        # logged steps only: they already wait for the step there, so the async
        # dispatch of the other steps is kept. Every process stops at the same step.
        may_stop = jax.process_count() == 1 or save or global_step % config.log_every == 0
        if not end and may_stop and stop.requested():
            if good_step != global_step:
                ckpt.save(global_step, state, iterator.get_state(), meta)
            raise TrainingInterrupted(
                f"{signal.Signals(stop.signum).name} at step {global_step}/{total_steps}: "
                f"checkpoint saved in {ckpt.directory}; re-run the same command to resume "
                f"from step {global_step}",
                stop.signum,
            )
        if config.debug.kill_at_step and global_step == config.debug.kill_at_step:
            os.kill(os.getpid(), signal.Signals[config.debug.kill_signal])
    return state, meta, last
