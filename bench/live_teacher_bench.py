"""Live-teacher step cost: live KD vs the stored-signal step vs (student step + teacher forward).

    python bench/live_teacher_bench.py                      # tiny student, tiny-7 teacher, CPU
    python bench/live_teacher_bench.py --student demo-student --teacher demo-teacher \
        --vocab 2048 --batch 8 --seq 128 --steps 10

Times (median of --steps after one warm-up step, each step waited for) on
one device, the same synthetic batch for every program:

- ``nll``: the student's NLL step (no teacher signal);
- ``stored_kd``: the KD step on a stored exact top-K (``loss.signal=topk``);
- ``teacher_forward``: the teacher alone: its jitted forward and its
  full-vocabulary unembed tile by tile (a logsumexp per token, so [B,T,V] is
  never built, as in the step);
- ``live_kd``: the KD step with the live teacher (``teacher.checkpoint``),
  full-vocabulary forward KL.

Issue 20's target (a benchmark, not a timed test): live_kd ≤ 1.1 × (student
step + teacher forward alone); both student steps are reported as the
"student step". The teacher is random (its cost does not depend on its
weights). JSON goes to bench/results/live_teacher_<date>.json and a table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
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
from trainer.training import data, live_teacher, methods, sharding, tiled_loss  # noqa: E402
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


def _median_s(fn, steps):
    """Median seconds of `fn()` (which waits for its result) over `steps` calls after one warm-up."""
    fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def _step_time(args, config, mesh, host_batch, teacher=None):
    model_cfg = train.model_config_from(config)
    (phase,) = methods.phases(config, model_cfg.num_layers)
    plan = train.PhasePlan(phase=phase, num_steps=10_000, flops_per_token=1.0)
    runner = train.PhaseRunner(config, model_cfg, plan, mesh, teacher=teacher)
    batch = runner.put_batch(host_batch)
    box = {"state": runner.init_state(jax.random.key(0))}

    def one():
        box["state"], metrics = runner.step(box["state"], batch)
        jax.block_until_ready(metrics)

    return _median_s(one, args.steps)


def _teacher_forward_time(args, teacher, tokens_BxT):
    cfg = teacher.model_cfg

    def forward(params, tokens):
        final = model.forward(params, tokens, cfg).final_hidden_BxTxD
        emb = model.embedding_table(params)
        return tiling.map_token_tiles(
            lambda h: jax.nn.logsumexp(
                tiled_loss.tile_logits(h.reshape(-1, h.shape[-1]), emb), axis=-1
            ).reshape(h.shape[:2]),
            final,
            args.token_tile,
        )

    fn = jax.jit(forward)
    tokens = jnp.asarray(tokens_BxT)
    return _median_s(lambda: jax.block_until_ready(fn(teacher.params, tokens)), args.steps)


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
        times = {
            "nll": _step_time(args, _config(args, "nll"), mesh, host_batch),
            "stored_kd": _step_time(args, _config(args, "kd"), mesh, host_batch),
            "teacher_forward": _teacher_forward_time(args, teacher, host_batch["tokens"]),
            "live_kd": _step_time(
                args, live_config, mesh, {"tokens": host_batch["tokens"]}, teacher
            ),
        }
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(jax.devices()[0].device_kind),
        "load_avg_1m": os.getloadavg()[0],
        "args": vars(args),
        "step_s": times,
        "live_vs_stored_kd": times["live_kd"] / times["stored_kd"],
        "live_vs_nll_plus_teacher": times["live_kd"] / (times["nll"] + times["teacher_forward"]),
        "live_vs_stored_kd_plus_teacher": times["live_kd"]
        / (times["stored_kd"] + times["teacher_forward"]),
        "target": "live_kd <= 1.1 x (student step + teacher forward alone)",
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"live_teacher_{result['date'][:10]}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"{'program':18}{'ms/step':>10}")
    for name, seconds in times.items():
        print(f"{name:18}{1e3 * seconds:>10.2f}")
    for key in ("live_vs_stored_kd", "live_vs_nll_plus_teacher", "live_vs_stored_kd_plus_teacher"):
        print(f"{key:32}{result[key]:>8.3f}")
    print(f"JSON: {path}")
    return result


if __name__ == "__main__":
    main()
