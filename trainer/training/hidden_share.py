"""What the hidden-state term weighs in HLDC / HLDF: its share of the loss and of the gradient.

γ's meaning depends on `loss.hidden_reduction` (loss_options.HiddenReduction): the
paper's mean over the teacher width D puts the term in [0, 4/D], so at the
demo's D=128 the paper's γ=0.1 is ~4e-4 of a loss of ~1.4 and HLDC trains as
KD. A user cannot see that from γ alone, so at the first `LOGGED_STEPS` logged
steps of a phase with a hidden term the trainer prints (process 0) one line,
the way it prints the objective penalty::

    hidden term (hldc, γ=0.1, loss.hidden_reduction=mean over D=128) at step 25:
    γ·L_emb = 0.00041 (L_emb 0.0041) = 0.03% of the loss 1.4212; 0.6% of the
    student's gradient norm

and keeps the same numbers in RUN_DIR/hidden_share.json (the demo report reads
it). The gradient share ‖∇θ γ·L_emb‖ / ‖∇θ L‖ is over the student's own
parameters θ (the regressor's gradient is all hidden term, so counting it
would say nothing), and is computed at the first logged step only, by a
separate jitted function (one more compile, two gradient passes): not a
per-step cost. HLDF phase 1 trains on L_HT alone, so its
share is 1 by construction (printed, not computed); phase 2 has no hidden
term.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp

from trainer.training import methods, phase_loss

LOGGED_STEPS = 3  # Logged steps of each phase whose share is printed and recorded.
FILENAME = "hidden_share.json"


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))


def make_grad_norms_fn(runner):
    """jit (state, batch) -> (‖∇θ γ·L_emb‖, ‖∇θ L‖) over the student params, for runner's phase."""
    plan, phase = runner.plan, runner.plan.phase

    def grad_norms(state, batch, teacher_params):
        def term(params, hidden_only: bool):
            loss, step_metrics = phase_loss.loss_fn(
                params,
                state.regressor,
                batch,
                state.step,
                phase=phase,
                config=runner.config,
                model_cfg=runner.model_cfg,
                num_steps=plan.num_steps,
                encoding=runner.encoding,
                teacher_params=teacher_params,
                teacher_cfg=runner.teacher_cfg,
            )
            return phase.hidden_weight * step_metrics["hidden_mse"] if hidden_only else loss

        # Two plain gradients, not one jacrev: a vmapped backward would hold two sets of
        # cotangents at once, and this must fit wherever the train step fits.
        g_hidden = jax.grad(lambda p: term(p, True))(state.params)
        g_total = jax.grad(lambda p: term(p, False))(state.params)
        return _norm(g_hidden), _norm(g_total)

    jitted = jax.jit(grad_norms)  # A live teacher's params: an argument, never a constant.
    return lambda state, batch: jitted(state, batch, runner.teacher_params)


def loss_share(phase: methods.Phase, values: dict) -> dict:
    """The hidden term's part of a logged step's loss, from its metrics (host floats)."""
    weighted = phase.hidden_weight * values["hidden_mse"]
    loss = values["loss"]
    return {
        "hidden_term": values["hidden_mse"],
        "weighted": weighted,
        "loss": loss,
        "loss_share": weighted / loss if loss else float("nan"),
    }


def describe(method: str, phase: methods.Phase, d_teacher: int, record: dict) -> str:
    """The one line the trainer prints for a record of `ShareLog`."""
    what = f"loss.hidden_reduction={phase.hidden_reduction} over D={d_teacher}"
    if not phase.kd_term and not phase.data_term:
        return (
            f"hidden term ({method} phase {phase.index}, {what}) at step {record['step']}: "
            f"L_HT = {record['hidden_term']:.5g} is the whole loss (this phase trains on "
            f"it alone)"
        )
    line = (
        f"hidden term ({method}, γ={phase.hidden_weight:g}, {what}) at step {record['step']}: "
        f"γ·L_emb = {record['weighted']:.3g} (L_emb {record['hidden_term']:.3g}) = "
        f"{100 * record['loss_share']:.3g}% of the loss {record['loss']:.4f}"
    )
    if "grad_share" in record:
        line += f"; {100 * record['grad_share']:.3g}% of the student's gradient norm"
    return line


class ShareLog:
    """Prints and records the hidden term's share at a phase's first logged steps.

    Args:
        config: the trainer config (method, run_dir).
        runner: the phase's loop.PhaseRunner (its plan, config and encoding).
    """

    def __init__(self, config, runner):
        self.config, self.runner, self.phase = config, runner, runner.plan.phase
        self.path = os.path.join(config.run_dir, FILENAME)
        self.state = {
            "method": config.method,
            "gamma": float(config.loss.gamma),
            "hidden_reduction": self.phase.hidden_reduction,
            "d_teacher": runner.d_teacher,
            "records": [],
        }
        if os.path.exists(self.path):  # A resumed run keeps what it printed before.
            with open(self.path, encoding="utf-8") as f:
                self.state["records"] = json.load(f)["records"]
        done = [r for r in self.state["records"] if r["phase"] == self.phase.index]
        self.remaining = LOGGED_STEPS - len(done) if self.phase.hidden_term else 0
        self.grad_fn = None

    def observe(self, global_step: int, values: dict, state, batch) -> bool:
        """Records (and prints) the share at a logged step, until LOGGED_STEPS are done.

        Returns:
            True when it computed the gradient shares (a compile and two gradient
            passes the caller keeps out of its tokens/s measurement).
        """
        if self.remaining <= 0:
            return False
        record = {"phase": self.phase.index, "step": global_step, **loss_share(self.phase, values)}
        first = not any(r["phase"] == self.phase.index for r in self.state["records"])
        grads = first and (self.phase.kd_term or self.phase.data_term)
        if grads:
            # Every process takes part (the arrays are global); process 0 reports.
            self.grad_fn = self.grad_fn or make_grad_norms_fn(self.runner)
            hidden, total = (float(v) for v in jax.device_get(self.grad_fn(state, batch)))
            record.update(
                hidden_grad_norm=hidden,
                total_grad_norm=total,
                grad_share=hidden / total if total > 0 and math.isfinite(total) else float("nan"),
            )
        self.remaining -= 1
        self.state["records"].append(record)
        if jax.process_index() == 0:
            print(
                describe(self.config.method, self.phase, self.runner.d_teacher, record), flush=True
            )
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(self.state, f, indent=1)
        return grads
