"""What the planner compiles: the trainer's step or the dump's extraction step, per batch.

A target knows how to build, for a number of rows per batch shard, the real
jitted step with its real shardings and abstract arguments (nothing
allocated), and the useful FLOPs of one step (from `trainer.flops`):

- `TrainTarget`: a trainer config (`--config NAME[:arg]` + `--set k=v`, the
  same `load_config` as `python -m trainer`, so any field h25 or others add
  works), its mesh (`mesh.data/fsdp/tensor`) over the topology's devices, and
  for each phase `trainer.training.loop.PhaseRunner(...).step` lowered with the
  runner's abstract state and an abstract batch of the store arrays a phase
  reads (profile given, as the loader yields them). Rows are per (data×fsdp)
  shard: `data.batch_size = rows × data × fsdp`. A live teacher
  (`teacher.checkpoint`, whose config.json alone is read, or `teacher=` a
  model registry name: that model at the student's vocabulary and compute
  dtype) enters the step as abstract fp32 params sharded by the student's rules
  (`live_teacher.abstract_params`): no weights are read.
- `DumpTarget`: a teacher (registry name, V, dtype) and the dump's options
  (k, samples, layers, token tile, device encoding into a profile), the
  extraction step of `teacher_dump.extract.make_extract_fn` (composed with
  `teacher_dump.encode` as the pipeline does), params placed as
  `teacher_dump.teacher.place_params` places them (replicated over a 1-D data
  mesh) or FSDP-sharded (`params="fsdp"`, the trainer's sharding rules).
  Ranking choices that depend on the backend (`rank_float32`, the grouped
  top-k) are resolved for the TARGET platform, not for this process's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from store import StoreSchema, profiles
from teacher_dump import encode, extract, topk
from teacher_dump import teacher as teacher_lib
from trainer import flops
from trainer.model import gemma3 as model
from trainer.model import model_config
from trainer.plan.chips import PlanInputError
from trainer.training import config as config_lib
from trainer.training import decode, live_teacher, loop, methods, sharding

# The planner never writes a run or reads a store; validate() wants both named.
_UNUSED = "unused-by-the-planner"
# teacher.checkpoint under `--teacher NAME`: it makes the phases live (methods.phases
# reads whether it is set) and is never opened (the target holds the teacher's config).
_NAMED_TEACHER = "(--teacher {}: abstract params, no checkpoint)"


@dataclasses.dataclass(frozen=True)
class StepProgram:
    """One step to compile: the jitted function, its abstract arguments and its work.

    Attributes:
        name: e.g. "phase 1 (kd)" or "extract".
        jitted: the jitted step.
        args: abstract arguments (ShapeDtypeStructs with NamedShardings).
        tokens_per_step: global tokens one call processes.
        flops_per_token: useful FLOPs per token (trainer.flops; attention included).
    """

    name: str
    jitted: Any
    args: tuple
    tokens_per_step: int
    flops_per_token: float


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


class TrainTarget:
    """The trainer's step of a config on a device list.

    Args:
        spec: `--config` value ("gemma3_270m:kd", a file path, ...).
        overrides: `--set` values ("model.remat=full", "data.micro_batches=8", ...).
        devices: the devices of the topology.
        profile: the store profile whose arrays the batch holds (exact/compact/lean).
        teacher: a model registry name ("gemma3-1b") to plan as the live teacher, at
            the student's vocabulary and compute dtype, without a checkpoint ("": the
            config's own teacher.checkpoint, if any).

    Raises:
        ConfigError (PlanInputError): a bad config, override, mesh or teacher, naming the fix.
    """

    kind = "train"

    def __init__(
        self,
        spec: str,
        overrides: Sequence[str],
        devices,
        profile: str = "exact",
        teacher: str = "",
    ):
        config = config_lib.load_config(spec, list(overrides))
        if not config.run_dir:
            config.run_dir = _UNUSED
        if not config.store.url:
            config.store.url = _UNUSED
        if teacher:
            if config.teacher.checkpoint:
                raise PlanInputError(
                    f"--teacher {teacher} and teacher.checkpoint={config.teacher.checkpoint} both "
                    f"name the live teacher; pass one of them"
                )
            config.teacher.checkpoint = _NAMED_TEACHER.format(teacher)
        config_lib.validate(config)
        if profile not in profiles.PROFILES:
            raise PlanInputError(
                f"unknown profile {profile!r}: pass one of {list(profiles.PROFILES)}"
            )
        self.config, self.profile, self.teacher_name = config, profile, teacher
        self.model_cfg = loop.model_config_from(config)
        self.phases = methods.phases(config, self.model_cfg.num_layers)
        self.teacher_cfg = _live_teacher_config(config, teacher, self.phases)
        self.mesh = sharding.make_mesh(
            config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices
        )
        self.shards = sharding.batch_divisor(self.mesh)
        self.requested_rows = -(-config.data.batch_size // self.shards)
        # Rows per shard come in whole micro-batches (the trainer refuses the rest).
        self.row_step = config.data.micro_batches
        if config.data.batch_size % self.shards:
            raise PlanInputError(
                f"data.batch_size={config.data.batch_size} is not divisible by the mesh's batch "
                f"axes (data×fsdp={self.shards}); use a multiple of {self.shards}"
            )

    def describe(self) -> dict:
        """The config facts a report shows."""
        c = self.config
        live = {}
        if self.teacher_cfg is not None:
            shapes = flops.param_shapes(self.teacher_cfg)
            live = {
                "live_teacher": {
                    "model": self.teacher_cfg.name,
                    "source": self.teacher_name
                    and "abstract params, --teacher"
                    or c.teacher.checkpoint,
                    "param_bytes": sum(int(a.size) * 4 for a in jax.tree.leaves(shapes)),
                    "charge_flops": bool(c.teacher.charge_flops),
                    "live_topk": int(c.teacher.live_topk),
                }
            }
        return {
            "config": f"{c.model.name} {c.method}",
            "model": c.model.name,
            "method": c.method,
            "vocab_size": c.model.vocab_size,
            "dtype": c.model.dtype,
            "remat": model_config.parse_remat(c.model.remat).value,
            "seq_len": c.data.seq_len,
            "profile": self.profile,
            "mesh": {k: int(v) for k, v in self.mesh.shape.items()},
            "batch_size": c.data.batch_size,
            "micro_batches": c.data.micro_batches,
            **live,
        }

    def param_bytes(self) -> int:
        """Bytes of the student's parameters as the state holds them (all devices together)."""
        shapes = flops.param_shapes(self.model_cfg)
        return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(shapes))

    def programs(self, rows: int) -> list[StepProgram]:
        """Each phase's step at `rows` rows per batch shard."""
        config = self.config.copy_and_resolve_references()
        config_lib.apply_overrides(config, [f"data.batch_size={rows * self.shards}"])
        plans = loop.plan_phases(config, self.model_cfg, self.phases, self.teacher_cfg)
        counts = loop.flop_counts(config, self.model_cfg, self.teacher_cfg)
        teacher = None
        if self.teacher_cfg is not None:  # Its step takes the teacher's params: abstract here.
            teacher = live_teacher.LiveTeacher(
                model_cfg=self.teacher_cfg,
                params=live_teacher.abstract_params(self.teacher_cfg, self.mesh),
                shardings=live_teacher.param_shardings(self.teacher_cfg, self.mesh),
                fingerprint="",
            )
        out = []
        for plan in plans:
            runner = loop.PhaseRunner(
                config, self.model_cfg, plan, self.mesh, self._encoding(config), teacher
            )
            batch = self._batch(config, runner, plan.phase)
            attn = (
                counts["attention_flops_per_token_ht"]
                if plan.phase.num_blocks
                else counts["attention_flops_per_token"]
            )
            # The roofline counts the teacher's forward whether or not the budget charges it
            # (plan.flops_per_token holds it only with teacher.charge_flops).
            teacher_fpt = 0.0 if config.teacher.charge_flops else plan.teacher_flops_per_token
            out.append(
                StepProgram(
                    f"phase {plan.phase.index} ({plan.phase.flops_method})",
                    runner.step,
                    (runner.abstract_state, batch),
                    config.data.batch_size * config.data.seq_len,
                    plan.flops_per_token + attn + teacher_fpt,
                )
            )
        return out

    def _schema(self, config) -> StoreSchema:
        hidden = bool(config.teacher.hidden_layer and config.teacher.d_model)
        return StoreSchema(
            seq_len=config.data.seq_len,
            k=config.data.k,
            vocab_size=config.model.vocab_size,
            hidden_layers=config_lib.oprd_layers(config) if hidden else (),  # OPRD: all its layers
            hidden_dim=config.teacher.d_model if hidden else 0,
            profile=self.profile,
            samples=config.data.samples,
            # On-policy phases read rollouts: their mask (and OPD's stored teacher log-probs).
            loss_mask=any(p.onpolicy for p in self.phases),
            token_logprob=any(p.opd_weight and not p.live for p in self.phases),
        )

    def _encoding(self, config) -> decode.Encoding:
        schema = self._schema(config)
        return decode.Encoding.from_schema(
            schema, profiles.get_profile(self.profile).encodings(schema)
        )

    def _batch(self, config, runner, phase) -> dict:
        """Abstract batch: the stored arrays the phase reads, [B, *row shape], stored dtypes."""
        schema = self._schema(config)
        # What the loader ships (activations RMS-normalised), by the names the step reads.
        fields = profiles.get_profile(self.profile).field_arrays(schema, normalized=True)
        specs = {s.name: s for field_specs in fields.values() for s in field_specs}
        try:
            names = decode.BatchSpec(encoding=runner.encoding, fields=phase.fields).names
        except (KeyError, ValueError) as e:
            raise PlanInputError(
                f"{config.method} reads {list(phase.fields)}, which a store with data.k="
                f"{config.data.k}, data.samples={config.data.samples}, teacher."
                f"hidden_layer={config.teacher.hidden_layer} lacks ({e}); set those "
                f"fields with --set"
            ) from None
        missing = [n for n in names if n not in specs]
        if missing:
            raise PlanInputError(
                f"{config.method} reads {missing}, which a store with data.k="
                f"{config.data.k}, data.samples={config.data.samples}, teacher."
                f"hidden_layer={config.teacher.hidden_layer} lacks; set those "
                f"fields with --set"
            )
        batch = {}
        for name in names:
            s = specs[name]
            shape = (config.data.batch_size,) + tuple(s.inner_shape)
            batch[name] = jax.ShapeDtypeStruct(
                shape, jnp.dtype(s.dtype), sharding=sharding.batch_sharding(self.mesh, len(shape))
            )
        return batch


def _live_teacher_config(config, name: str, phases) -> model_config.ModelConfig | None:
    """The live teacher's ModelConfig (None: none), checked against the run.

    Args:
        config: the validated config (teacher.checkpoint set iff a live teacher).
        name: `--teacher` (a registry name), or "" for teacher.checkpoint's config.json.
        phases: the method's phases.

    Raises:
        PlanInputError / ConfigError: an unknown name, a method that reads no teacher, or a
            teacher the run cannot use (check_compatible's line, naming the --set fix).
    """
    if not live_teacher.enabled(config):
        return None
    if name:
        if name not in model_config.config_names():
            raise PlanInputError(
                f"--teacher {name!r} is not a model name; pass one of "
                f"{list(model_config.config_names())} (or --set teacher.checkpoint=PATH)"
            )
        cfg = model_config.get_config(
            name, vocab_size=config.model.vocab_size, dtype=config.model.dtype
        )
    else:
        cfg = live_teacher.teacher_config(config)
    where = f"--teacher {name}" if name else f"teacher.checkpoint={config.teacher.checkpoint}"
    if not any(p.teacher_logits or p.teacher_layers for p in phases):
        raise PlanInputError(
            f"{where}: method {config.method} reads no teacher; drop it, or plan a method "
            f"that distils (kd, hldc, hldf, opd, oprd)"
        )
    try:  # No store and no metadata here: vocabulary, width and layer only.
        live_teacher.check_compatible(
            config, cfg, {}, None, hidden=any(p.teacher_layers for p in phases)
        )
    except config_lib.ConfigError as e:
        raise PlanInputError(
            str(e).replace(f"teacher.checkpoint={config.teacher.checkpoint}", where)
        ) from None
    return cfg


DUMP_PARAMS = ("replicated", "fsdp")


@dataclasses.dataclass(frozen=True)
class DumpOptions:
    """The dump's extraction options (pipelines.dump's flags).

    Attributes:
        teacher: model registry name ("gemma3-4b").
        vocab_size: V.
        dtype: compute dtype of the teacher.
        seq_len: T.
        k: top-k kept (0: none, then samples > 0).
        samples: sampled draws per position.
        layers: captured layers (None: L // 2).
        token_tile: tokens per de-embedding tile.
        profile: device encoding into this store profile ("" : the raw signal).
        params: "replicated" (as teacher_dump places them) or "fsdp".
    """

    teacher: str = "gemma3-4b"
    vocab_size: int = 262_144
    dtype: str = "bfloat16"
    seq_len: int = 2048
    k: int = 128
    samples: int = 0
    layers: tuple | None = None
    token_tile: int = extract.DEFAULT_TOKEN_TILE
    profile: str = "exact"
    params: str = "replicated"


class DumpTarget:
    """The dump's extraction step on a device list (data parallel over all devices).

    Raises:
        ConfigError (PlanInputError): bad teacher name, options or profile.
    """

    kind = "dump"

    def __init__(self, options: DumpOptions, devices, platform: str, requested_rows: int):
        o = options
        if o.params not in DUMP_PARAMS:
            raise PlanInputError(
                f"unknown params placement {o.params!r}: pass one of {list(DUMP_PARAMS)}"
            )
        if o.profile and o.profile not in profiles.PROFILES:
            raise PlanInputError(
                f"unknown profile {o.profile!r}: pass one of "
                f"{sorted(profiles.PROFILES)} (or no device encoding)"
            )
        self.options, self.platform = o, platform
        self.cfg = model_config.get_config(o.teacher, vocab_size=o.vocab_size, dtype=o.dtype)
        # The dump resolves these by jax.default_backend(); here that is this CPU
        # process, so resolve them for the target the way the dump would there.
        self.spec = extract.resolve_spec(
            self.cfg,
            k=o.k,
            layers=o.layers,
            token_tile=o.token_tile,
            samples=o.samples,
            rank_float32=(platform == "cpu"),
            topk_group=topk.auto_group(platform, o.vocab_size, o.k) if o.k else 0,
        )
        self.devices = list(devices)
        self.shards = len(self.devices)
        self.requested_rows = requested_rows
        if o.params == "replicated":
            self.mesh = Mesh(np.asarray(self.devices), ("data",))  # teacher.place_params' mesh
        else:
            self.mesh = sharding.make_mesh(1, len(self.devices), 1, devices=self.devices)

    def describe(self) -> dict:
        o = self.options
        return {
            "config": f"{o.teacher} dump",
            "teacher": o.teacher,
            "vocab_size": o.vocab_size,
            "dtype": o.dtype,
            "seq_len": o.seq_len,
            "k": o.k,
            "samples": o.samples,
            "layers": list(self.spec.layers),
            "token_tile": o.token_tile,
            "profile": o.profile or "none (raw signal to host)",
            "params": o.params,
            "rank_float32": self.spec.rank_float32,
            "topk_group": self.spec.topk_group,
        }

    def param_bytes(self) -> int:
        """Bytes of the teacher's params as the dump holds them (cast_for_inference)."""
        return sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(self._param_shapes()))

    def _param_shapes(self):
        cfg = self.cfg
        return jax.eval_shape(
            lambda: teacher_lib.cast_for_inference(model.init_params(cfg, jax.random.key(0)), cfg)
        )

    def _param_shardings(self, shapes):
        if self.options.params == "replicated":
            return jax.tree.map(lambda _: NamedSharding(self.mesh, P()), shapes)
        return sharding.tree_shardings(model.param_logical_axes(self.cfg), shapes, self.mesh)

    def programs(self, rows: int) -> list[StepProgram]:
        """The extraction step at `rows` rows per device."""
        o, spec = self.options, self.spec
        fn = extract.make_extract_fn(
            self.cfg,
            k=spec.k,
            layers=spec.layers,
            token_tile=spec.token_tile,
            rank_float32=spec.rank_float32,
            samples=spec.samples,
            topk_group=spec.topk_group,
        )
        if o.profile:
            schema = StoreSchema(
                seq_len=o.seq_len,
                k=o.k,
                vocab_size=o.vocab_size,
                hidden_layers=spec.layers,
                hidden_dim=self.cfg.d_model,
                profile=o.profile,
                samples=o.samples,
            )
            fn = encode.make_encoded_extract_fn(fn, schema)
        shapes = self._param_shapes()
        params = _abstract(shapes, self._param_shardings(shapes))
        batch_axes = P(self.mesh.axis_names) if o.params == "replicated" else P(sharding.BATCH_AXES)
        B = rows * self.shards
        tokens = jax.ShapeDtypeStruct(
            (B, o.seq_len), jnp.int32, sharding=NamedSharding(self.mesh, batch_axes)
        )
        args: tuple = (params, tokens)
        if o.samples:
            args += (
                jax.ShapeDtypeStruct(
                    (B,), jnp.int32, sharding=NamedSharding(self.mesh, batch_axes)
                ),
            )
        counts = flops.model_flops(self.cfg, seq_len=o.seq_len)
        # Forward only: a third of the training cost (C_data = 6N + 6dV; attention likewise).
        per_token = (counts["flops_per_token"]["nll"] + counts["attention_flops_per_token"]) / 3
        return [StepProgram("extract", fn, args, B * o.seq_len, per_token)]
