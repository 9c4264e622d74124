"""Trainer config: loading `get_config()` files, `--set` overrides, validation.

One config system for the trainer: an `ml_collections.ConfigDict` returned by
`trainer/configs/<name>.py:get_config(arg)` (by name) or any file defining
`get_config` (by path). This module loads such a file,
applies `key=value` overrides (typed by the existing field, so a typo or a
wrong type fails loudly), and validates every value before anything compiles.

    config = load_config("tiny:kd", overrides=["optim.lr=1e-3"])   # or a file path
    validate(config)          # ConfigError (a ValueError) naming field + fix
"""

from __future__ import annotations

import ast
import enum
import importlib.util
import json
import math
import os

import ml_collections

# One ConfigError for model and trainer configs; parse_enum is re-exported for callers.
from trainer.model.model_config import ConfigError, parse_enum, parse_remat
from trainer.training import loss_options


class Method(enum.Enum):
    """Training methods (docs/DESIGN.md §1). KD/HLD are loss terms + phases, one trainer."""

    NLL = "nll"  # Data loss only (also teacher pre-training on a k=0 store).
    KD = "kd"  # (1-α) NLL + α τ² KL on the stored top-k.
    HLDC = "hldc"  # KD + γ normalized MSE through a linear regressor (joint).
    HLDF = "hldf"  # Phase 1: first half + MLP regressor, MSE only; phase 2: KD.
    OPD = "opd"  # On rollouts: reverse KL(student ‖ teacher) on completion tokens.
    OPRD = "oprd"  # On rollouts: normalized MSE via a linear regressor (+ β·OPD).


# The config fields that shape each method's training (the others are inert for
# it): what a sweep varies and what a report compares runs on.
METHOD_HPARAMS = {
    "nll": ("optim.lr",),
    "kd": ("optim.lr", "loss.tau", "loss.alpha"),
    "hldc": ("optim.lr", "loss.tau", "loss.alpha", "loss.gamma"),
    "hldf": ("optim.lr", "loss.tau", "loss.alpha", "hldf.p1"),
    "opd": ("optim.lr", "onpolicy.lam"),
    "oprd": ("optim.lr", "onpolicy.opd_weight", "onpolicy.lam"),
}


class BudgetUnit(enum.Enum):
    """Unit of `config.budget.value`."""

    FLOPS = "flops"  # Training FLOPs (docs/DESIGN.md §1 per-token costs).
    OT = "ot"  # Overtraining units: 1 OT = 20·N tokens at C_data.


# Config fields holding a local path or a URL: resolved once, when the config
# is loaded, against the directory the command runs in (the run then never
# depends on its working directory, and config.json records where things are).
PATH_FIELDS = ("run_dir", "store.url", "teacher.checkpoint", "model.init_checkpoint")

# Fields added after runs were already being checkpointed, with the value that
# reproduces the older behaviour: a config.json without the key is read as
# holding it, so those runs still resume (check_same_config_on_resume).
ADDED_FIELDS = {
    "loss.signal": loss_options.Signal.TOPK.value,
    "data.samples": 0,
    "loss.hidden_reduction": loss_options.HiddenReduction.MEAN.value,
    "data.micro_batches": 1,
    "teacher.checkpoint": "",
    "teacher.charge_flops": False,
    "teacher.live_topk": 0,
    "onpolicy.opd_weight": 0.0,
    "onpolicy.lam": 1.0,
    "onpolicy.staleness": 8,
    "onpolicy.hidden_layers": "",
    "model.init_checkpoint": "",
}

# Fields that change how a step is computed, not what it computes (memory for
# time): a run may resume under other values, e.g. on chips with less memory.
# (model.remat was a bool before it became a policy: old runs hold True/False.)
EXECUTION_FIELDS = ("model.remat", "data.micro_batches")


# The config files shipped in the package (trainer/configs/), found by path: they
# import the trainer, so the trainer never imports them (docs/INTERFACES.md).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
    """Names of the configs shipped inside the package (`--config NAME[:arg]`)."""
    return sorted(
        n[:-3]
        for n in os.listdir(CONFIGS_DIR)
        if n.endswith(".py") and n not in ("__init__.py", "base.py")
    )


def config_file(name_or_path: str) -> str:
    """The get_config() file of `--config`: an existing file path, else a shipped name.

    Args:
        name_or_path: a path (relative to the current directory) of a Python
            file, or the name of a shipped config ("tiny", "gemma3_270m.py").

    Raises:
        ConfigError: neither an existing file nor a shipped config name.
    """
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    name = name_or_path[:-3] if name_or_path.endswith(".py") else name_or_path
    if name in shipped_configs():
        return os.path.join(CONFIGS_DIR, name + ".py")
    raise ConfigError(
        f"config {name_or_path!r} is neither a file nor a shipped config; pass "
        f"a path to a get_config() file or one of {shipped_configs()} "
        f"(e.g. --config tiny:kd)"
    )


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """Loads `NAME_OR_PATH` or `NAME_OR_PATH:arg` and applies `key=value` overrides.

    Args:
        spec: a shipped config name (`tiny`, `gemma3_270m`, see shipped_configs)
            or the path of a Python file defining `get_config(arg=None)`; an
            optional `:arg` suffix is passed as its string argument.
        overrides: iterable of "dotted.key=value" strings; the value is parsed
            as a Python literal when possible, then cast to the field's type.

    Returns:
        The (unvalidated) ConfigDict, its PATH_FIELDS made absolute.

    Raises:
        ConfigError: unknown config, no get_config, unknown key or bad value.
    """
    name_or_path, _, arg = spec.partition(":")
    path = config_file(name_or_path)
    module_spec = importlib.util.spec_from_file_location("_trainer_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(
            f"config file {path!r} defines no get_config(); add "
            f"`def get_config(arg=None) -> ml_collections.ConfigDict`"
        )
    config = module.get_config(arg) if arg else module.get_config()
    apply_overrides(config, overrides)
    resolve_paths(config)
    return config


def resolve_local_path(url: str) -> str:
    """A local path made absolute (relative to the current directory); URLs
    (`scheme://...`) and "" unchanged."""
    if not url or "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def resolve_paths(config: ml_collections.ConfigDict) -> None:
    """Makes every PATH_FIELDS value absolute, in place (on a config being built: `load_config`)."""
    for dotted in PATH_FIELDS:
        config_set(config, dotted, resolve_local_path(config_get(config, dotted)))


def config_get(config, dotted: str):
    """The value at a dotted key ("data.seq_len")."""
    node = config
    for name in dotted.split("."):
        node = node[name]
    return node


def config_set(config, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


def resolved_config(config, overrides: dict | None = None) -> ml_collections.FrozenConfigDict:
    """A frozen copy of `config` with its paths absolute and `overrides` ({dotted key: value}) applied.

    The run's settings after everything that decides them (the user's file and
    `--set`s, the store's geometry: `store_align.resolve`); `config` itself is
    not modified, and nothing can modify the result.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    resolve_paths(out)
    for dotted, value in (overrides or {}).items():
        config_set(out, dotted, value)
    return ml_collections.FrozenConfigDict(out)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1} (config.json and --set use dotted keys)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # A bare string such as kd or /tmp/run.


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> None:
    """Applies "a.b=value" strings in place; unknown keys are an error."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value; write e.g. --set lr=1e-3")
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
                raise ConfigError(
                    f"unknown config key {key!r}; see the config file for the fields that exist"
                )
            node = node[name]
        if leaf not in node:
            raise ConfigError(
                f"unknown config key {key!r}; see the config file for the fields that exist"
            )
        old = node[leaf]
        value = _parse_value(text)
        if isinstance(old, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be True or False, got {text!r}")
        elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(old, str) and not isinstance(value, str):
            value = text
        elif old is not None and not isinstance(value, type(old)):
            raise ConfigError(f"{key} must be a {type(old).__name__}, got {text!r}")
        node[leaf] = value


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every trainer field's range; raises ConfigError naming field + fix."""
    method = parse_enum(Method, config.method, "method")
    loss_options.parse_alpha_schedule(config.loss.alpha_schedule)
    parse_enum(BudgetUnit, config.budget.unit, "budget.unit")
    _check(bool(config.run_dir), "run_dir is empty; pass --set run_dir=/path/to/run")
    _check(bool(config.store.url), "store.url is empty; pass --set store.url=/path/to/store")
    opt = config.optim
    _check(
        math.isfinite(opt.lr) and opt.lr > 0,
        f"optim.lr={opt.lr} must be a positive finite number; e.g. --set optim.lr=4e-4",
    )
    _check(opt.warmup_steps >= 0, f"optim.warmup_steps={opt.warmup_steps} must be >= 0")
    _check(
        0.0 <= opt.decay_fraction < 1.0,
        f"optim.decay_fraction={opt.decay_fraction} must be in [0, 1); the paper uses 0.1",
    )
    _check(
        0.0 < opt.final_lr_fraction <= 1.0,
        f"optim.final_lr_fraction={opt.final_lr_fraction} must be in (0, 1]; paper: 0.01",
    )
    _check(
        0.0 <= opt.b1 < 1.0 and 0.0 <= opt.b2 < 1.0,
        f"optim.b1={opt.b1}, optim.b2={opt.b2} must be in [0, 1)",
    )
    _check(
        opt.eps > 0 and opt.weight_decay >= 0,
        f"optim.eps={opt.eps} must be > 0 and optim.weight_decay={opt.weight_decay} >= 0",
    )
    _check(opt.grad_clip >= 0, f"optim.grad_clip={opt.grad_clip} must be >= 0 (0: off)")
    loss = config.loss
    _check(0.0 <= loss.alpha <= 1.0, f"loss.alpha={loss.alpha} must be in [0, 1]")
    for field in ("alpha_start", "alpha_final"):
        _check(0.0 <= loss[field] <= 1.0, f"loss.{field}={loss[field]} must be in [0, 1]")
    _validate_kd_settings(loss)
    _check(loss.gamma >= 0.0, f"loss.gamma={loss.gamma} must be >= 0")
    try:
        loss_options.parse_hidden_reduction(loss.hidden_reduction)
    except ConfigError as e:
        raise ConfigError(f"loss.hidden_reduction: {e}") from None
    _check(loss.tau > 0 and math.isfinite(loss.tau), f"loss.tau={loss.tau} must be > 0")
    _check(loss.token_tile > 0, f"loss.token_tile={loss.token_tile} must be > 0")
    _check(
        0.0 < config.hldf.p1 < 1.0,
        f"hldf.p1={config.hldf.p1} must be in (0, 1), e.g. 0.01 for 1% of the budget",
    )
    _check(
        config.hldf.warmup_steps >= 0, f"hldf.warmup_steps={config.hldf.warmup_steps} must be >= 0"
    )
    _check(
        config.budget.value > 0 and math.isfinite(config.budget.value),
        f"budget.value={config.budget.value} must be > 0; e.g. --set budget.value=1e15",
    )
    _check(config.data.batch_size > 0, f"data.batch_size={config.data.batch_size} must be > 0")
    _check(config.data.seq_len > 1, f"data.seq_len={config.data.seq_len} must be > 1")
    _check(config.data.k >= 0, f"data.k={config.data.k} must be >= 0 (0: any k)")
    _check(
        0 <= config.data.samples <= 255,
        f"data.samples={config.data.samples} must be in [0, 255] (0: any S)",
    )
    _check(
        config.data.micro_batches >= 1,
        f"data.micro_batches={config.data.micro_batches} must be >= 1 (1: no accumulation)",
    )
    parse_remat(config.model.remat)  # ConfigError listing the policies.
    _check(
        config.data.num_threads >= 0
        and config.data.prefetch_buffer_size >= 0
        and config.data.num_workers >= 0,
        "data.num_threads, data.prefetch_buffer_size and data.num_workers must be >= 0",
    )
    for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
        _check(config[field] > 0, f"{field}={config[field]} must be > 0")
    _check(
        config.peak_flops_per_device > 0,
        f"peak_flops_per_device={config.peak_flops_per_device} must be > 0 (e.g. 699e12)",
    )
    _check(
        config.distributed_heartbeat_s > 0 and config.distributed_init_timeout_s > 0,
        f"distributed_heartbeat_s={config.distributed_heartbeat_s} and "
        f"distributed_init_timeout_s={config.distributed_init_timeout_s} must be > 0 seconds",
    )
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        _check(
            size == -1 or size >= 1,
            f"mesh.{axis}={size} must be >= 1, or -1 for 'all remaining devices'",
        )
    _validate_teacher(config, method)
    if method in (Method.HLDC, Method.HLDF, Method.OPRD):
        _check(
            config.teacher.hidden_layer >= 1,
            f"teacher.hidden_layer={config.teacher.hidden_layer} must be a stored layer "
            f"(>= 1) for method {method.value}; run `python -m store inspect STORE`",
        )
        _check(
            config.teacher.d_model >= 1,
            f"teacher.d_model={config.teacher.d_model} must be the teacher width (>= 1) "
            f"for method {method.value}",
        )
    _check(
        config.debug.kill_signal in ("SIGKILL", "SIGINT", "SIGTERM"),
        f"debug.kill_signal={config.debug.kill_signal!r} must be SIGKILL, SIGINT or SIGTERM",
    )
    _check(
        config.student_layer >= 0,
        f"student_layer={config.student_layer} must be >= 0 (0: L_S // 2)",
    )


def _validate_teacher(config, method: Method) -> None:
    """The live teacher's and the on-policy methods' fields (their files: loop, live_teacher)."""
    teacher, onp = config.teacher, config.onpolicy
    _check(
        teacher.live_topk >= 0,
        f"teacher.live_topk={teacher.live_topk} must be >= 0 (0: the full vocabulary)",
    )
    if teacher.checkpoint:
        _check(
            config.loss.signal != loss_options.Signal.SAMPLED.value,
            "loss.signal=sampled reads stored draws, but teacher.checkpoint gives the live "
            "teacher's full vocabulary; drop --set loss.signal=sampled (or teacher.checkpoint)",
        )
    else:
        _check(
            teacher.live_topk == 0,
            f"teacher.live_topk={teacher.live_topk} needs a live teacher; "
            f"--set teacher.checkpoint=PATH or teacher.live_topk=0",
        )
        _check(
            not teacher.charge_flops,
            "teacher.charge_flops=True needs a live teacher (a stored signal costs the run "
            "nothing); --set teacher.checkpoint=PATH or teacher.charge_flops=False",
        )
    _check(0.0 <= onp.lam <= 1.0, f"onpolicy.lam={onp.lam} must be in [0, 1] (1: on-policy only)")
    _check(onp.opd_weight >= 0.0, f"onpolicy.opd_weight={onp.opd_weight} must be >= 0")
    _check(onp.staleness >= 1, f"onpolicy.staleness={onp.staleness} must be >= 1 (steps per round)")
    if method is Method.OPD:
        _check(
            onp.lam > 0.0,
            "onpolicy.lam=0 leaves OPD without its on-policy term; use --set method=kd instead",
        )
    if onp.hidden_layers:
        _check(
            method is Method.OPRD,
            f"onpolicy.hidden_layers={onp.hidden_layers!r} is read by method=oprd only "
            f"(method={method.value} reads teacher.hidden_layer); drop it",
        )
        oprd_layers(config)  # ConfigError naming the bad entry.


def oprd_layers(config) -> tuple[int, ...]:
    """The teacher layers OPRD's hidden term matches, ascending (trainer.training.methods).

    `onpolicy.hidden_layers` ("9,17,26"), or `teacher.hidden_layer` alone when it is
    "". The list must hold teacher.hidden_layer: that layer's student layer is
    `student_layer`, and the other layers' student layers scale from that pair.

    Raises:
        ConfigError: an entry that is not a layer number >= 1, a repeated layer,
            or a list without teacher.hidden_layer (one line, the fix).
    """
    text = config.onpolicy.hidden_layers
    anchor = int(config.teacher.hidden_layer)
    if not text:
        return (anchor,)
    example = f"e.g. --set onpolicy.hidden_layers={anchor},{2 * anchor}"
    try:
        layers = [int(x) for x in str(text).split(",")]
    except ValueError:
        raise ConfigError(
            f"onpolicy.hidden_layers={text!r} must be comma-separated layer numbers, {example}"
        ) from None
    _check(
        all(x >= 1 for x in layers) and len(set(layers)) == len(layers),
        f"onpolicy.hidden_layers={text!r} must list distinct teacher layers >= 1, {example}",
    )
    _check(
        anchor in layers,
        f"onpolicy.hidden_layers={text!r} lacks teacher.hidden_layer={anchor} (its student "
        f"layer is student_layer; the others scale from that pair); add it, {example}",
    )
    return tuple(sorted(layers))


def _validate_kd_settings(loss) -> None:
    """loss.tail / divergence / tau / signal through the loss modules' own parsers."""
    try:
        loss_options.check_temperature(loss.tau, loss_options.parse_tail_mode(loss.tail))
    except ConfigError as e:
        raise ConfigError(f"loss.tail/loss.tau: {e}") from None
    try:
        loss_options.parse_divergence(loss.divergence)
    except ConfigError as e:
        raise ConfigError(f"loss.divergence: {e}") from None
    try:
        signal = loss_options.parse_signal(loss.signal)
    except ConfigError as e:
        raise ConfigError(f"loss.signal: {e}") from None
    if signal is loss_options.Signal.SAMPLED:
        try:
            loss_options.check_sampled_settings(loss.tau, loss.divergence)
        except ConfigError as e:
            raise ConfigError(str(e)) from None


def to_json(config: ml_collections.ConfigDict) -> str:
    """The full config as indented JSON (written to RUN_DIR/config.json)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def check_same_config_on_resume(config, run_dir: str) -> None:
    """Refuses to resume a run's checkpoints under different settings.

    A re-launched run (or sweep point) with another `--set` would otherwise
    continue the old trajectory while config.json claimed the new values.
    `debug.*` (fault injection) may differ. `run_dir` is the run's location, not
    a setting, and paths are compared resolved: `runs/x` and `/abs/runs/x` name
    the same directory (older config.json files recorded them as typed).
    """
    old_path = os.path.join(run_dir, "config.json")
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    if not (os.path.exists(old_path) and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)):
        return
    with open(old_path, encoding="utf-8") as f:
        old = flatten(json.load(f))
    old = {**ADDED_FIELDS, **old}
    new = flatten(json.loads(to_json(config)))
    for key in PATH_FIELDS:
        for side in (old, new):
            if isinstance(side.get(key), str):
                side[key] = resolve_local_path(side[key])
    changed = sorted(
        k
        for k in set(old) | set(new)
        if not k.startswith("debug.")
        and k != "run_dir"
        and k not in EXECUTION_FIELDS
        and old.get(k) != new.get(k)
    )
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"run_dir {run_dir} holds checkpoints of a run with other settings ({diffs}); "
            "use a new run_dir, or rerun with the original settings to resume"
        )
