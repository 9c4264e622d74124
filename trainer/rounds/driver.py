"""On-policy rounds through the store: rollout → score → train, resumable at every stage.

    python -m trainer.rounds --config tiny:opd [--set KEY=VALUE ...] \
        --student CKPT --teacher CKPT --prompts STORE --prompt-len P \
        --rounds R --work DIR [--temperature 1] [--top-k 0] [--top-p 1] [--seed 0] \
        [--batch-size 8] [--rows-per-unit 64] [--limit ROWS] [--live | -- DUMP/BEAM OPTIONS]

Round r (0-based), in DIR/round-<r>/:

1. ``rollouts``: the round's student (``--student`` for round 0, else round
   r−1's ``run/export``) completes the first P tokens of each prompt-store row
   to ``data.seq_len`` tokens (``trainer.generate``; seed ``--seed`` + r), a
   tokens store with ``loss_mask`` on the completion.
2. ``scored``: ``python -m pipelines.dump --input-store`` (a subprocess) scores
   them with the teacher:
   ``token_logprob`` (OPD's single-sample estimator), top-``data.k`` at
   ``--profile`` (exact unless passed after ``--``), and for OPRD the hidden
   state at ``teacher.hidden_layer``. Options after ``--`` go to the dump
   (``--runner``, ``--profile``, Beam flags).
3. ``run``: the trainer (``--config`` with ``--set``) trains
   ``onpolicy.staleness`` steps on ``scored`` from the round's student
   (``model.init_checkpoint``); its ``export/`` is the next round's student.
   Each round is its own run: optimizer moments, the OPRD regressor and the
   learning-rate schedule (warm-up included) start again every round.

With ``--live`` a round has no ``scored`` stage: the trainer runs ``--teacher``
as a live teacher (``teacher.checkpoint``, set by the driver) on the
``rollouts`` store itself, so the teacher terms are exact (OPD's full-vocabulary
reverse KL, the hidden state at any layer) and nothing is dumped. It is the
same loop as the store path with the teacher beside the student: what the
store rounds buy (scoring off the training accelerators, any Beam runner) is
measured against it in bench/onpolicy_compare.py.

DIR/rounds.json is the ledger: the settings, then one entry per finished
stage (written after the stage, atomically). A rerun of the same command skips
the finished stages and reruns the first unfinished one, which resumes itself
(committed store units are kept, the trainer resumes from its checkpoint), so a
killed round ends with the same stores and losses. A rerun with other settings
is refused; only ``--rounds`` may grow.

Exit status: 0 done; 2 bad input, one line naming the fix; 130 on Ctrl-C
(128 + signal for a signal in training) after a line saying how to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

LEDGER = "rounds.json"
STAGES = ("rollouts", "scored", "run")  # In order; also the stage's folder in the round.
LIVE_STAGES = ("rollouts", "run")  # --live: the trainer runs the teacher; nothing is scored.
ON_POLICY = ("opd", "oprd")


class RoundsError(ValueError):
    """Bad rounds input: a method that is not on-policy, a teacher of another vocabulary."""


def round_dir(work: str, r: int) -> str:
    return os.path.join(work, f"round-{r:03d}")


def _student(work: str, student: str, r: int) -> str:
    """The round's student: `student` for round 0, else the previous round's run dir."""
    return student if r == 0 else os.path.join(round_dir(work, r - 1), "run")


def _config(spec, overrides, work, student, r, teacher=None):
    """The round's trainer config: the user's, on this round's store, from its student.

    `teacher`: None for store rounds (the trainer reads the scored store); with --live the
    teacher's model dir, run live by the trainer on the round's rollouts.
    """
    from trainer.evaluate.runner import resolve_checkpoint
    from trainer.training import config as config_lib
    from trainer.training import loop, methods

    here = round_dir(work, r)
    init = resolve_checkpoint(_student(work, student, r))[0]
    config = config_lib.load_config(
        spec,
        [
            *overrides,
            f"store.url={os.path.join(here, 'rollouts' if teacher else 'scored')}",
            f"run_dir={os.path.join(here, 'run')}",
            f"model.init_checkpoint={init}",
        ],
    )
    if config.teacher.checkpoint:
        raise RoundsError(
            "teacher.checkpoint is set: the rounds' teacher is --teacher; drop --set "
            "teacher.checkpoint (add --live to run it live instead of scoring through the store)"
        )
    if teacher:
        config.teacher.checkpoint = resolve_checkpoint(teacher)[0]
    config_lib.validate(config)
    if config.method not in ON_POLICY:
        raise RoundsError(
            f"method={config.method} is not on-policy; use --config NAME:opd or :oprd"
        )
    # Exactly onpolicy.staleness steps: a FLOPs budget half a step above them (steps round down).
    model_cfg = loop.model_config_from(config)
    (phase,) = methods.phases(config, model_cfg.num_layers)
    per_step = loop.phase_flops_per_token(config, model_cfg, phase) * (
        config.data.batch_size * config.data.seq_len
    )
    methods.check_schedules(config, [(phase, config.onpolicy.staleness)])  # Before round 0.
    config.budget.unit = config_lib.BudgetUnit.FLOPS.value
    config.budget.value = (config.onpolicy.staleness + 0.5) * per_step
    return config


def check_inputs(config, student: str, teacher: str, prompt_len: int) -> None:
    """Refuses, before anything is written: missing checkpoints, vocabularies that differ.

    Raises:
        RoundsError, trainer.evaluate.runner.EvalError, ModelIOError: with the fix.
    """
    from trainer.evaluate.runner import resolve_checkpoint
    from trainer.model import model_io

    vocab = {}
    for name, path in (("--student", student), ("--teacher", teacher)):
        vocab[name] = model_io.load_config(resolve_checkpoint(path)[0]).vocab_size
    if vocab["--student"] != config.model.vocab_size:
        raise RoundsError(
            f"--student has V={vocab['--student']}, the config model.vocab_size="
            f"{config.model.vocab_size}; pass --set model.vocab_size={vocab['--student']}"
        )
    if vocab["--teacher"] != vocab["--student"]:
        raise RoundsError(
            f"--teacher has V={vocab['--teacher']}, the student V={vocab['--student']}: "
            f"another vocabulary cannot score the student's rollouts; pass a teacher of its tokenizer"
        )
    if not 1 <= prompt_len < config.data.seq_len:
        raise RoundsError(
            f"--prompt-len {prompt_len} leaves no completion in data.seq_len={config.data.seq_len}; "
            f"pass a value in [1, {config.data.seq_len - 1}]"
        )


def _read_ledger(work: str, settings: dict) -> list[dict]:
    path = os.path.join(work, LEDGER)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        ledger = json.load(f)
    old = {"live": False, **{k: v for k, v in ledger["settings"].items() if k != "rounds"}}
    if old != {k: v for k, v in settings.items() if k != "rounds"}:
        changed = sorted(
            k for k in set(old) | set(settings) if k != "rounds" and old.get(k) != settings.get(k)
        )
        raise RoundsError(
            f"{work} holds rounds of other settings ({', '.join(changed)}); rerun with the "
            f"original settings to resume, or pass another --work"
        )
    return list(ledger["done"])


def _write_ledger(work: str, settings: dict, done: list[dict]) -> None:
    path = os.path.join(work, LEDGER)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "done": done}, f, indent=2)
    os.replace(path + ".tmp", path)  # Never half a ledger.


def _rollouts(a: dict, config, r: int) -> dict[str, Any]:
    from trainer.generate import runner
    from trainer.model.sampling import SamplingConfig

    s = runner.rollouts(
        _student(a["work"], a["student"], r),
        config.data.seq_len - a["prompt_len"],
        store=a["prompts"],
        prompt_len=a["prompt_len"],
        out=os.path.join(round_dir(a["work"], r), "rollouts"),
        sampling=SamplingConfig(a["temperature"], a["top_k"], a["top_p"]),
        seed=a["seed"] + r,
        batch_size=a["batch_size"],
        limit=a["limit"],
        rows_per_unit=a["rows_per_unit"],
        progress=lambda *_: None,
    )
    return {"rows": s["rows"], "generated_tokens": s["generated_tokens"], "flops": s["flops"]}


def _scored(a: dict, config, r: int) -> dict[str, Any]:
    """`python -m pipelines.dump --input-store` in a subprocess: the trainer never imports
    the pipeline (docs/INTERFACES.md), and a Beam runner gets a process of its own."""
    from store import StoreReader
    from trainer.training.config import oprd_layers

    here = round_dir(a["work"], r)
    layers = [str(layer) for layer in oprd_layers(config)] if config.method == "oprd" else []
    argv = [
        "--input-store",
        os.path.join(here, "rollouts"),
        "--store",
        os.path.join(here, "scored"),
        "--teacher",
        a["teacher"],
        "--k",  # A top-k only for λ < 1's off-policy KD; else k=0: no bytes nobody reads.
        "0" if config.onpolicy.lam == 1.0 else str(max(config.data.k, 1)),
        "--token-logprob",  # OPD's estimator (oprd: its β·OPD term).
        "on" if config.method == "opd" or config.onpolicy.opd_weight else "off",
        "--hidden-layers",
        *layers,
        "--rows-per-unit",
        str(a["rows_per_unit"]),
        "--batch-size",
        str(a["batch_size"]),
        "--progress-interval",
        "0",
        *a["dump_args"],
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.dump", *argv], capture_output=True, text=True
    )
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode:
        lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
        if proc.returncode == 2 and lines:
            raise RoundsError(f"scoring round {r}: {lines[-1][len('error: ') :]}")
        raise RuntimeError(f"pipelines.dump exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    reader = StoreReader(os.path.join(here, "scored"))
    return {"rows": int(reader.num_rows), "fields": sorted(reader.read([0]))}


def _run(a: dict, config, r: int) -> dict[str, Any]:
    from trainer.training import loop

    s = loop.run(config)
    out = {
        k: s[k] for k in ("global_step", "cumulative_flops", "loss", "opd", "hidden_mse") if k in s
    }
    if "teacher" in s:  # --live: the teacher's forward FLOPs (charged or not: its "charged").
        out["teacher_flops"] = s["teacher"]["flops"]
    return out


STAGE_FNS: dict[str, Callable[[dict, Any, int], dict[str, Any]]] = {
    "rollouts": _rollouts,
    "scored": _scored,
    "run": _run,
}


def run_rounds(
    spec: str,
    overrides: Sequence[str],
    student: str,
    teacher: str,
    prompts: str,
    prompt_len: int,
    rounds: int,
    work: str,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    rows_per_unit: int = 64,
    limit: int | None = None,
    dump_args: Sequence[str] = (),
    live: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Runs (or resumes) `rounds` rounds in `work` (see the module docstring).

    Returns:
        The ledger's entries: {"round", "stage", "wall_s", ...the stage's summary}.

    Raises:
        ValueError subclasses (RoundsError, ConfigError, StoreError, PipelineError, ...)
        for bad input, with the fix in the message; KeyboardInterrupt / TrainingInterrupted.
    """
    if rounds < 1:
        raise RoundsError(f"--rounds {rounds} must be >= 1")
    if live and dump_args:
        raise RoundsError(
            f"--live has no scoring stage, so the dump options after -- ({' '.join(dump_args)}) "
            f"would do nothing; drop them or drop --live"
        )
    work = os.path.abspath(work)
    student, teacher, prompts = (
        p if "://" in p else os.path.abspath(p) for p in (student, teacher, prompts)
    )
    a = dict(
        spec=spec,
        overrides=list(overrides),
        student=student,
        teacher=teacher,
        prompts=prompts,
        prompt_len=prompt_len,
        rounds=rounds,
        work=work,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        rows_per_unit=rows_per_unit,
        limit=limit,
        dump_args=list(dump_args),
        live=live,
    )
    live_teacher = teacher if live else None

    def config_of(r):
        return _config(spec, overrides, work, student, r, live_teacher)

    check_inputs(config_of(0), student, teacher, prompt_len)
    os.makedirs(work, exist_ok=True)
    done = _read_ledger(work, a)
    finished = {(d["round"], d["stage"]) for d in done}
    for r in range(rounds):
        for stage in LIVE_STAGES if live else STAGES:
            if (r, stage) in finished:
                continue
            os.makedirs(round_dir(work, r), exist_ok=True)
            start = time.perf_counter()
            summary = STAGE_FNS[stage](a, config_of(r), r)
            wall = round(time.perf_counter() - start, 3)
            done.append({"round": r, "stage": stage, "wall_s": wall, **summary})
            _write_ledger(work, a, done)
            log(f"[rounds] round {r + 1}/{rounds} {stage}: {wall:.1f}s {json.dumps(summary)}")
    return done


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default adds the usage)
        self.exit(2, f"error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input (one line), 130 / 128 + signal interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    dump_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = _Parser(prog="python -m trainer.rounds", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="trainer config, e.g. tiny:opd")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--student", required=True, help="round 0's student: run dir or model dir")
    p.add_argument("--teacher", required=True, help="teacher model dir (or finished run dir)")
    p.add_argument("--prompts", required=True, help="tokens store whose row prefixes are prompts")
    p.add_argument("--prompt-len", type=int, required=True, help="P tokens of prompt per row")
    p.add_argument("--rounds", type=int, required=True, help="rounds to run (may grow on rerun)")
    p.add_argument("--work", required=True, help="folder of the rounds and rounds.json")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout sampling; 0 greedy")
    p.add_argument("--top-k", type=int, default=0, help="rollout top-k cut (0: none)")
    p.add_argument("--top-p", type=float, default=1.0, help="rollout top-p cut (1: none)")
    p.add_argument("--seed", type=int, default=0, help="rollout seed of round 0 (round r: +r)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per generate / teacher call")
    p.add_argument("--rows-per-unit", type=int, default=64, help="store work-unit rows")
    p.add_argument("--limit", type=int, help="only the first ROWS prompts")
    p.add_argument(
        "--live",
        action="store_true",
        help="no scoring stage: the trainer runs --teacher live on the rollouts",
    )
    a = p.parse_args(argv)
    from trainer.training.interrupt import TrainingInterrupted

    try:
        run_rounds(
            a.config,
            a.set,
            a.student,
            a.teacher,
            a.prompts,
            a.prompt_len,
            a.rounds,
            a.work,
            temperature=a.temperature,
            top_k=a.top_k,
            top_p=a.top_p,
            seed=a.seed,
            batch_size=a.batch_size,
            rows_per_unit=a.rows_per_unit,
            limit=a.limit,
            dump_args=dump_args,
            live=a.live,
            log=lambda line: print(line, flush=True),
        )
    except ValueError as e:  # Every input error of the stages is one (their CLIs say the same).
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"interrupted: {e}; rerun the same command to resume", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(
            "interrupted: finished stages are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0
