"""Run directories as the report sees them: which runs, which settings, which scores.

Reads RUN_DIR/config.json, metrics.jsonl and eval.json (a directory holding run
directories is expanded) into `Run`s, and holds the one mapping from the
trainer's config.json (trainer/configs/base.py) to the report's names: the
method, the (model, budget) group, and the settings runs are told apart by
(every config field that differs between the runs given, bookkeeping aside).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

from trainer.training import config as config_lib
from trainer.training import eval_results, metrics

METHOD_KEY = "method"
GROUP_KEYS = {"model": "model.name", "budget": "budget.value", "budget_unit": "budget.unit"}
# Every other config field that differs between the runs given is a setting the runs are
# told apart, paired and selected by (η, τ, α, γ, p1, but also tail, k, seed, divergence,
# α schedule, ...), except bookkeeping that cannot change the result:
BOOKKEEPING_KEYS = (
    "run_dir",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "peak_flops_per_device",
    "distributed",
    "store.allow_partial",
    "data.num_threads",
    "data.prefetch_buffer_size",
    "data.num_workers",
    "loss.token_tile",
)
BOOKKEEPING_PREFIXES = ("debug.", "mesh.")
# Fields a method never reads (prefix match): a difference there does not split its runs.
# (A kd run's teacher.checkpoint, live_topk, charge_flops do matter: a live teacher.)
_STORED_LAYER = ("teacher.hidden_layer", "teacher.d_model", "student_layer")
INERT = {
    "nll": ("loss.", "hldf.", "teacher.", "student_layer", "data.k", "data.samples", "onpolicy."),
    "kd": ("loss.gamma", "hldf.", *_STORED_LAYER, "onpolicy."),
    "hldc": ("hldf.", "onpolicy."),
    "hldf": ("loss.gamma", "onpolicy."),
    "opd": ("loss.gamma", "hldf.", *_STORED_LAYER, "onpolicy.opd_weight"),
    "oprd": ("loss.gamma", "hldf."),
}
METHODS = tuple(INERT)  # The methods the report knows, in table order.
SEED_KEY = "seed"
# Short names in tables; any other differing field shows as its dotted key.
SHORT_NAMES = {
    "optim.lr": "lr",
    "loss.tau": "tau",
    "loss.alpha": "alpha",
    "loss.gamma": "gamma",
    "hldf.p1": "p1",
    "loss.tail": "tail",
    "loss.divergence": "divergence",
    "loss.alpha_schedule": "alpha_schedule",
    "data.k": "k",
}
REFERENCE_METHOD = "kd"
# metrics.jsonl: x axis and the loss plotted (first key present wins).
FLOPS_KEY = "cumulative_flops"
CURVE_KEYS = ("nll", "loss")
# eval.json metrics shown in the tables.
PPL_TASKS = ("heldout", "docs")
ERROR_TASKS = ("hellaswag", "piqa", "arc_easy", "winogrande", "lambada")


class ReportError(ValueError):
    """No usable run directories, or a run directory that is not one."""


@dataclasses.dataclass
class Run:
    name: str
    path: str
    method: str
    group: tuple
    hparams: dict[str, Any]
    eval: dict[str, dict]
    curve: list[tuple[float, float]]
    curve_key: str | None
    config: dict = dataclasses.field(default_factory=dict)
    seed_ppls: list = dataclasses.field(default_factory=list)  # set by best_per_method
    scores: dict = dataclasses.field(default_factory=dict)  # eval.json "scores": every row set

    @property
    def ppl_task(self) -> str | None:
        """The log-perplexity task runs are ranked by (heldout, else docs)."""
        return next((t for t in PPL_TASKS if "log_ppl" in self.eval.get(t, {})), None)

    @property
    def ppl_score(self) -> dict | None:
        """The eval.json score of `ppl_task` (None: not evaluated)."""
        task = self.ppl_task
        return self.eval[task] if task else None

    @property
    def log_ppl(self) -> float | None:
        task = self.ppl_task
        return float(self.eval[task]["log_ppl"]) if task else None

    @property
    def ppl_rows(self) -> tuple | None:
        """The row set of the headline log-ppl (eval_results.row_key)."""
        task = self.ppl_task
        return (task,) + eval_results.row_key(self.eval[task]) if task else None


def _lookup(config: dict, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{path} is not valid JSON ({e}); re-run the step that writes {what}"
        ) from None


def expand_run_dirs(paths: Sequence[str]) -> list[str]:
    """Run directories among `paths`; a directory of run directories is expanded."""
    if not paths:
        raise ReportError("no run directories given; pass RUN_DIR... written by python -m trainer")
    runs = []
    for path in paths:
        if not os.path.isdir(path):
            raise ReportError(
                f"run directory {path!r} does not exist; pass directories "
                f"written by python -m trainer"
            )
        if os.path.exists(os.path.join(path, "config.json")):
            runs.append(path)
            continue
        children = sorted(
            os.path.join(path, c)
            for c in os.listdir(path)
            if os.path.exists(os.path.join(path, c, "config.json"))
        )
        if not children:
            raise ReportError(
                f"{path!r} holds no config.json (empty or not a run directory); "
                f"pass run directories written by python -m trainer"
            )
        runs += children
    return runs


def load_run(path: str) -> Run:
    """Reads one run directory (eval.json and metrics.jsonl are optional)."""
    config = _read_json(os.path.join(path, "config.json"), "config.json (python -m trainer)")
    method = str(_lookup(config, METHOD_KEY) or "").lower()
    if method not in METHODS:
        raise ReportError(
            f"{path}/config.json has method={method!r}; expected one of "
            f"{sorted(METHODS)}: pass trainer run directories"
        )
    hparams: dict[
        str, Any
    ] = {}  # Filled by load_runs: which fields differ depends on all the runs.
    group = tuple(_lookup(config, key) for key in GROUP_KEYS.values())
    eval_path = os.path.join(path, "eval.json")
    evals = (
        eval_results.normalize(_read_json(eval_path, "eval.json (python -m trainer.evaluate)"))
        if os.path.exists(eval_path)
        else {}
    )
    curve, curve_key = [], None
    if os.path.exists(os.path.join(path, "metrics.jsonl")):
        records = metrics.read_metrics(path)  # one record per step, resumes de-duplicated
        keys = [k for k in CURVE_KEYS if any(k in r for r in records)]
        if keys:
            curve_key = keys[0]
            curve = [
                (float(r[FLOPS_KEY]), float(r[curve_key]))
                for r in records
                if FLOPS_KEY in r and curve_key in r
            ]
    return Run(
        os.path.basename(os.path.normpath(path)),
        path,
        method,
        group,
        hparams,
        evals.get("tasks", {}),
        curve,
        curve_key,
        # A config.json older than a field reads as holding the value that
        # reproduces it, so old and new runs of one setting still pair.
        config={**config_lib.ADDED_FIELDS, **config_lib.flatten(config)},
        scores=evals.get("scores", {}),
    )


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config fields whose value differs between the runs (bookkeeping excluded)."""
    keys = sorted(set().union(*(r.config for r in runs))) if runs else []
    skip = set(BOOKKEEPING_KEYS) | set(GROUP_KEYS.values()) | {METHOD_KEY}
    return [
        k
        for k in keys
        if k not in skip
        and not k.startswith(BOOKKEEPING_PREFIXES)
        and len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1
    ]


def load_runs(paths: Sequence[str]) -> list[Run]:
    """Loads run directories and sets each run's settings (the fields that differ)."""
    runs = [load_run(p) for p in expand_run_dirs(paths)]
    keys = differing_keys(runs)
    for run in runs:
        names = {SHORT_NAMES.get(k, k): k for k in keys if not k.startswith(INERT[run.method])}
        run.hparams = {name: run.config.get(names[name]) for name in sorted(names)}
    return runs
