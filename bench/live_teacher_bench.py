"""Live-teacher step cost: live KD vs the stored-signal step vs (student step + teacher forward).

    python bench/live_teacher_bench.py                      # tiny student, tiny-7 teacher, CPU
    python bench/live_teacher_bench.py --student demo-student --teacher demo-teacher \
        --vocab 2048 --batch 8 --seq 128 --k 32 --steps 9

Times (medians of --steps interleaved rounds after one warm-up call each:
every round runs every program once in turn, so the shared machine's load
hits them alike) on one device, the same synthetic batch for every program:

- ``nll``: the student's NLL step (no teacher signal);
- ``stored_kd``: the KD step on a stored exact top-K (``loss.signal=topk``);
- ``teacher_forward``: the teacher alone: its jitted forward and its
  full-vocabulary unembed tile by tile (a logsumexp per token, so [B,T,V] is
  never built, as in the step);
- ``live_kd``: the KD step with the live teacher (``teacher.checkpoint``),
  full-vocabulary forward KL;
- the logit loss alone (value and gradient w.r.t. the student's final hidden
  states and embedding, NLL + KD weighed as the KD step weighs them), before
  and after: ``loss_*_recompute`` is today's path (`tiled_loss.tiled_logit_losses`
  then the weighted sum: each tile rematerialised in the backward pass, the
  teacher's tile logits included), ``loss_*_fused`` is
  `tiled_loss.tiled_weighted_loss` (each tile's gradient taken in the forward
  pass), for the live teacher and for the stored top-K.

Counts beside the times (the machine is shared, counts are not): matmul
FLOPs of each program's jaxpr (scan bodies times their length) split into
the student's, the teacher forward's (`live_teacher.SCOPE`) and the
teacher's tile unembeds (`live_kd.TEACHER_UNEMBED_SCOPE`), and the
elementwise work on [*, V] arrays.

Issue 20's target (a benchmark, not a timed test): live_kd ≤ 1.1 × (student
step + teacher forward alone); both student steps are reported as the
"student step". The teacher is random (its cost does not depend on its
weights). JSON goes to bench/results/live_teacher_<date>.json and a table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from trainer.model import gemma3 as model  # noqa: E402
from trainer.model import model_config, model_io, tiling  # noqa: E402
from trainer.training import config as config_lib  # noqa: E402
from trainer.training import (  # noqa: E402
    data,
    decode,
    live_kd,
    live_teacher,
    methods,
    sharding,
    tiled_loss,
)
from trainer.training import loop as train  # noqa: E402


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", default="tiny", help="student registry name")
    p.add_argument("--teacher", default="tiny-7", help="teacher registry name")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--k", type=int, default=8, help="stored top-K of the stored_kd step")
    p.add_argument("--token-tile", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    return p.parse_args(argv)


def interleaved_medians(fns: dict, rounds: int) -> dict:
    """Median seconds of each `fn()` (which waits for its result) over interleaved rounds.

    Every fn is called once first (compiles); each round then calls every fn
    once, in turn (A B C A B C …), so load changes hit all programs alike.
    """
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _scope_tag(eqn, vocab: int, scope: str) -> tuple[str, bool]:
    if live_kd.TEACHER_UNEMBED_SCOPE in scope:
        owner = "teacher_unembed"
    elif live_teacher.SCOPE in scope:
        owner = "teacher_forward"
    else:
        owner = "student"
    shapes = [getattr(v.aval, "shape", ()) for v in (*eqn.invars, *eqn.outvars)]
    return owner, any(vocab in shape for shape in shapes)


def jaxpr_counts(closed_jaxpr, vocab: int) -> dict:
    """Matmul FLOPs by owner and elementwise elements on [*, V] arrays of a jaxpr.

    Scan bodies count `length` times; nested jaxprs (jit, remat, custom rules)
    once each time they appear, so a rematerialised forward counts again.
    The owner comes from the name scope (inherited by nested jaxprs).
    """
    counts = {"matmul_student": 0, "matmul_teacher_forward": 0, "matmul_teacher_unembed": 0}
    counts["matmul_student_V"] = 0
    counts["elementwise_V"] = 0

    def walk(jaxpr, mult, outer):
        for eqn in jaxpr.eqns:
            scope = outer + "/" + str(eqn.source_info.name_stack)
            if eqn.primitive.name == "scan":
                walk(eqn.params["jaxpr"].jaxpr, mult * eqn.params["length"], scope)
                continue
            subs = [
                v.jaxpr if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns") else v
                for v in eqn.params.values()
                if hasattr(v, "eqns") or (hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"))
            ]
            if subs:
                for sub in subs:
                    walk(sub, mult, scope)
                continue
            owner, wide = _scope_tag(eqn, vocab, scope)
            if eqn.primitive.name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                k = math.prod(eqn.invars[0].aval.shape[i] for i in contract)
                flops = 2 * math.prod(eqn.outvars[0].aval.shape) * k * mult
                counts[f"matmul_{owner}"] += flops
                if owner == "student" and wide:
                    counts["matmul_student_V"] += flops
            elif wide and eqn.outvars and hasattr(eqn.outvars[0].aval, "shape"):
                counts["elementwise_V"] += math.prod(eqn.outvars[0].aval.shape) * mult

    walk(closed_jaxpr.jaxpr, 1, "")
    counts["matmul_total"] = sum(
        counts[k] for k in ("matmul_student", "matmul_teacher_forward", "matmul_teacher_unembed")
    )
    return counts


def _config(args, method, teacher_dir=""):
    sets = [
        "store.url=unused",
        "run_dir=unused",
        f"model.name={args.student}",
        f"model.vocab_size={args.vocab}",
        f"data.batch_size={args.batch}",
        f"data.seq_len={args.seq}",
        f"data.k={args.k}",
        f"loss.token_tile={args.token_tile}",
        f"teacher.checkpoint={teacher_dir}",
    ]
    return config_lib.load_config(f"tiny:{method}", sets)


def _step_program(args, config, mesh, host_batch, teacher=None):
    """(one timed call, the step's jaxpr) of a trainer step (its own PhaseRunner)."""
    model_cfg = train.model_config_from(config)
    (phase,) = methods.phases(config, model_cfg.num_layers)
    plan = train.PhasePlan(phase=phase, num_steps=10_000, flops_per_token=1.0)
    runner = train.PhaseRunner(config, model_cfg, plan, mesh, teacher=teacher)
    batch = runner.put_batch(host_batch)
    box = {"state": runner.init_state(jax.random.key(0))}

    def one():
        box["state"], metrics = runner.step(box["state"], batch)
        jax.block_until_ready(metrics)

    # The jitted step traces once (chex): count a fresh runner's step function.
    counted = train.PhaseRunner(config, model_cfg, plan, mesh, teacher=teacher).step
    jitted = getattr(counted, "jitted", counted)
    extra = (teacher.params,) if teacher is not None else ()
    return one, jax.make_jaxpr(jitted)(runner.abstract_state, batch, *extra)


def _teacher_forward_program(args, teacher, tokens_BxT):
    cfg = teacher.model_cfg

    def forward(params, tokens):
        with jax.named_scope(live_teacher.SCOPE):
            final = model.forward(params, tokens, cfg).final_hidden_BxTxD
        emb = model.embedding_table(params)

        def lse(h):
            with jax.named_scope(live_kd.TEACHER_UNEMBED_SCOPE):
                logits = tiled_loss.tile_logits(h.reshape(-1, h.shape[-1]), emb)
            return jax.nn.logsumexp(logits, axis=-1).reshape(h.shape[:2])

        return tiling.map_token_tiles(lse, final, args.token_tile)

    fn = jax.jit(forward)
    tokens = jnp.asarray(tokens_BxT)
    return (
        lambda: jax.block_until_ready(fn(teacher.params, tokens)),
        jax.make_jaxpr(forward)(teacher.params, tokens),
    )


def _loss_programs(args, student_cfg, teacher, host_batch):
    """{name: (timed call, jaxpr)} of the logit loss alone, today's path vs the fused one."""
    rng = jax.random.split(jax.random.key(2), 4)
    B, T, V = args.batch, args.seq, args.vocab
    hidden = jax.random.normal(rng[0], (B, T, student_cfg.d_model), jnp.float32)
    emb = jax.random.normal(rng[1], (V, student_cfg.d_model), jnp.float32)
    t_hidden = jax.random.normal(rng[2], (B, T, teacher.model_cfg.d_model), jnp.float32)
    t_emb = model.embedding_table(teacher.params)
    tokens = jnp.asarray(host_batch["tokens"])
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    ones = jnp.ones((B, T), jnp.float32) / (B * T)
    weights = {"nll": 0.3 * ones, "kd": 0.7 * ones}  # (1 - α)·NLL + α·KD, α = 0.7.
    signal = data.synthetic_batch(B, T, V, k=args.k, seed=0)
    stored = jax.tree.map(
        jnp.asarray,
        decode.decode_batch(
            {k: jnp.asarray(v) for k, v in signal.items()},
            decode.BatchSpec(encoding=decode.EXACT, fields=("tokens", "topk")),
        ).topk,
    )
    cases = {
        "live": (
            live_kd.live_terms_fn(t_emb, nll=True, kd=True, top1=True),
            {tiled_loss.TARGETS: targets, live_kd.TEACHER_HIDDEN: t_hidden},
        ),
        "stored": (
            tiled_loss.logit_terms_fn(nll=True, kd=True, top1=True, tail="bucket"),
            {tiled_loss.TARGETS: targets, tiled_loss.TEACHER: stored},
        ),
    }
    out = {}
    for name, (per_tile, inputs) in cases.items():

        def recompute(h, e, per_tile=per_tile, inputs=inputs):
            terms = tiled_loss.tiled_logit_losses(h, e, per_tile, inputs, args.token_tile)
            return sum(jnp.sum(weights[k] * terms[k]) for k in weights)

        def fused(h, e, per_tile=per_tile, inputs=inputs):
            return tiled_loss.tiled_weighted_loss(h, e, per_tile, inputs, weights, args.token_tile)[
                0
            ]

        for how, fn in (("recompute", recompute), ("fused", fused)):
            grad = jax.value_and_grad(fn, argnums=(0, 1))
            jitted = jax.jit(grad)
            out[f"loss_{name}_{how}"] = (
                lambda jitted=jitted: jax.block_until_ready(jitted(hidden, emb)),
                jax.make_jaxpr(grad)(hidden, emb),
            )
    return out


def format_table(result: dict) -> str:
    """Times and counts per program (MFLOP of matmuls; M elements on [*, V] arrays)."""
    lines = [
        f"{'program':24}{'ms':>9}{'student':>10}{'t.fwd':>10}{'t.unemb':>10}{'total':>10}"
        f"{'elem V':>10}   (matmul MFLOP; elementwise M elements)"
    ]
    for name, seconds in result["step_s"].items():
        c = result["counts"][name]
        lines.append(
            f"{name:24}{1e3 * seconds:>9.2f}{c['matmul_student'] / 1e6:>10.1f}"
            f"{c['matmul_teacher_forward'] / 1e6:>10.1f}{c['matmul_teacher_unembed'] / 1e6:>10.1f}"
            f"{c['matmul_total'] / 1e6:>10.1f}{c['elementwise_V'] / 1e6:>10.1f}"
        )
    for key in (
        "live_vs_stored_kd",
        "live_vs_nll_plus_teacher",
        "live_vs_stored_kd_plus_teacher",
        "matmul_live_vs_stored_kd_plus_teacher",
    ):
        lines.append(f"{key:40}{result[key]:>8.3f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = _parse(argv)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    host_batch = data.synthetic_batch(args.batch, args.seq, args.vocab, k=args.k, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        t_cfg = model_config.get_config(args.teacher, vocab_size=args.vocab)
        teacher_dir = os.path.join(tmp, "teacher")
        model_io.save_model(teacher_dir, t_cfg, model.init_params(t_cfg, jax.random.key(1)))
        live_config = _config(args, "kd", teacher_dir)
        teacher = live_teacher.load(live_config, mesh)
        programs = {
            "nll": _step_program(args, _config(args, "nll"), mesh, host_batch),
            "stored_kd": _step_program(args, _config(args, "kd"), mesh, host_batch),
            "teacher_forward": _teacher_forward_program(args, teacher, host_batch["tokens"]),
            "live_kd": _step_program(
                args, live_config, mesh, {"tokens": host_batch["tokens"]}, teacher
            ),
            **_loss_programs(args, train.model_config_from(live_config), teacher, host_batch),
        }
        counts = {name: jaxpr_counts(jaxpr, args.vocab) for name, (_, jaxpr) in programs.items()}
        times = interleaved_medians({name: fn for name, (fn, _) in programs.items()}, args.steps)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "load_avg_1m": os.getloadavg()[0],
        "args": vars(args),
        "step_s": times,
        "counts": counts,
        "live_vs_stored_kd": times["live_kd"] / times["stored_kd"],
        "live_vs_nll_plus_teacher": times["live_kd"] / (times["nll"] + times["teacher_forward"]),
        "live_vs_stored_kd_plus_teacher": times["live_kd"]
        / (times["stored_kd"] + times["teacher_forward"]),
        "matmul_live_vs_stored_kd_plus_teacher": counts["live_kd"]["matmul_total"]
        / (counts["stored_kd"]["matmul_total"] + counts["teacher_forward"]["matmul_total"]),
        "target": "live_kd <= 1.1 x (student step + teacher forward alone)",
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"live_teacher_{result['date'][:10]}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(format_table(result))
    print(f"JSON: {path}")
    return result


if __name__ == "__main__":
    main()
