"""Trainer config: loading `get_config()` files, `--set` overrides, validation.

One config system for the trainer: an `ml_collections.ConfigDict` returned by
`trainer/configs/<name>.py:get_config(arg)`. This module loads such a file,
applies `key=value` overrides (typed by the existing field, so a typo or a
wrong type fails loudly), and validates every value before anything compiles.

    config = load_config("trainer/configs/tiny.py", overrides=["lr=1e-3"])
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

from trainer.training import losses
from trainer.training.schedules import AlphaSchedule


class ConfigError(ValueError):
    """A trainer config value is missing, unknown or out of range."""


class Method(enum.Enum):
    """Training methods (DESIGN §1). KD/HLD are loss terms + phases, one trainer."""

    NLL = "nll"    # Data loss only (also teacher pre-training on a k=0 store).
    KD = "kd"      # (1-α) NLL + α τ² KL on the stored top-k.
    HLDC = "hldc"  # KD + γ normalized MSE through a linear regressor (joint).
    HLDF = "hldf"  # Phase 1: first half + MLP regressor, MSE only; phase 2: KD.


class BudgetUnit(enum.Enum):
    """Unit of `config.budget.value`."""

    FLOPS = "flops"  # Training FLOPs (DESIGN §1 per-token costs).
    OT = "ot"        # Overtraining units: 1 OT = 20·N tokens at C_data.


def parse_enum(enum_cls, value, field: str):
    """`enum_cls(value)` with a ConfigError that lists the allowed values."""
    try:
        return enum_cls(value)
    except ValueError:
        allowed = [m.value for m in enum_cls]
        raise ConfigError(f"{field}={value!r} is not supported; use one of {allowed}") from None


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """Loads `path.py` or `path.py:arg` and applies `key=value` overrides.

    Args:
        spec: path of a Python file defining `get_config(arg=None)`; an optional
            `:arg` suffix is passed as its string argument.
        overrides: iterable of "dotted.key=value" strings; the value is parsed
            as a Python literal when possible, then cast to the field's type.

    Returns:
        The (unvalidated) ConfigDict.

    Raises:
        ConfigError: missing file, no get_config, unknown key or bad value.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass e.g. "
                          f"--config trainer/configs/tiny.py")
    module_spec = importlib.util.spec_from_file_location("_trainer_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(); add "
                          f"`def get_config(arg=None) -> ml_collections.ConfigDict`")
    config = module.get_config(arg) if arg else module.get_config()
    apply_overrides(config, overrides)
    return config


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
                raise ConfigError(f"unknown config key {key!r}; see the config file for "
                                  f"the fields that exist")
            node = node[name]
        if leaf not in node:
            raise ConfigError(f"unknown config key {key!r}; see the config file for the "
                              f"fields that exist")
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
    parse_enum(AlphaSchedule, config.loss.alpha_schedule, "loss.alpha_schedule")
    parse_enum(BudgetUnit, config.budget.unit, "budget.unit")
    _check(bool(config.run_dir), "run_dir is empty; pass --set run_dir=/path/to/run")
    _check(bool(config.store.url), "store.url is empty; pass --set store.url=/path/to/store")
    opt = config.optim
    _check(math.isfinite(opt.lr) and opt.lr > 0,
           f"optim.lr={opt.lr} must be a positive finite number; e.g. --set optim.lr=4e-4")
    _check(opt.warmup_steps >= 0, f"optim.warmup_steps={opt.warmup_steps} must be >= 0")
    _check(0.0 <= opt.decay_fraction < 1.0,
           f"optim.decay_fraction={opt.decay_fraction} must be in [0, 1); the paper uses 0.1")
    _check(0.0 < opt.final_lr_fraction <= 1.0,
           f"optim.final_lr_fraction={opt.final_lr_fraction} must be in (0, 1]; paper: 0.01")
    _check(0.0 <= opt.b1 < 1.0 and 0.0 <= opt.b2 < 1.0,
           f"optim.b1={opt.b1}, optim.b2={opt.b2} must be in [0, 1)")
    _check(opt.eps > 0 and opt.weight_decay >= 0,
           f"optim.eps={opt.eps} must be > 0 and optim.weight_decay={opt.weight_decay} >= 0")
    _check(opt.grad_clip >= 0, f"optim.grad_clip={opt.grad_clip} must be >= 0 (0: off)")
    loss = config.loss
    _check(0.0 <= loss.alpha <= 1.0, f"loss.alpha={loss.alpha} must be in [0, 1]")
    for field in ("alpha_start", "alpha_final"):
        _check(0.0 <= loss[field] <= 1.0, f"loss.{field}={loss[field]} must be in [0, 1]")
    _validate_kd_settings(loss)
    _check(loss.gamma >= 0.0, f"loss.gamma={loss.gamma} must be >= 0")
    _check(loss.tau > 0 and math.isfinite(loss.tau), f"loss.tau={loss.tau} must be > 0")
    _check(loss.token_tile > 0, f"loss.token_tile={loss.token_tile} must be > 0")
    _check(0.0 < config.hldf.p1 < 1.0,
           f"hldf.p1={config.hldf.p1} must be in (0, 1), e.g. 0.01 for 1% of the budget")
    _check(config.hldf.warmup_steps >= 0,
           f"hldf.warmup_steps={config.hldf.warmup_steps} must be >= 0")
    _check(config.budget.value > 0 and math.isfinite(config.budget.value),
           f"budget.value={config.budget.value} must be > 0; e.g. --set budget.value=1e15")
    _check(config.data.batch_size > 0, f"data.batch_size={config.data.batch_size} must be > 0")
    _check(config.data.seq_len > 1, f"data.seq_len={config.data.seq_len} must be > 1")
    _check(config.data.k >= 0, f"data.k={config.data.k} must be >= 0 (0: any k)")
    _check(config.data.num_threads >= 0 and config.data.prefetch_buffer_size >= 0
           and config.data.num_workers >= 0, "data.num_threads, data.prefetch_buffer_size "
           "and data.num_workers must be >= 0")
    for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
        _check(config[field] > 0, f"{field}={config[field]} must be > 0")
    _check(config.peak_flops_per_device > 0,
           f"peak_flops_per_device={config.peak_flops_per_device} must be > 0 (e.g. 699e12)")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        _check(size == -1 or size >= 1, f"mesh.{axis}={size} must be >= 1, or -1 for "
                                        f"'all remaining devices'")
    if method in (Method.HLDC, Method.HLDF):
        _check(config.teacher.hidden_layer >= 1,
               f"teacher.hidden_layer={config.teacher.hidden_layer} must be a stored layer "
               f"(>= 1) for method {method.value}; run `python -m store inspect STORE`")
        _check(config.teacher.d_model >= 1,
               f"teacher.d_model={config.teacher.d_model} must be the teacher width (>= 1) "
               f"for method {method.value}")
    _check(config.student_layer >= 0,
           f"student_layer={config.student_layer} must be >= 0 (0: L_S // 2)")


def _validate_kd_settings(loss) -> None:
    """loss.tail / loss.divergence / loss.tau through the loss module's own parsers."""
    try:
        losses.check_temperature(loss.tau, losses.parse_tail_mode(loss.tail))
    except losses.LossConfigError as e:
        raise ConfigError(f"loss.tail/loss.tau: {e}") from None
    try:
        losses.parse_divergence(loss.divergence)
    except losses.LossConfigError as e:
        raise ConfigError(f"loss.divergence: {e}") from None


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config dict (e.g. config.json) by dotted key."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def to_json(config: ml_collections.ConfigDict) -> str:
    """The full config as indented JSON (written to RUN_DIR/config.json)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
