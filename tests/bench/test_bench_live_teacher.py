"""bench/live_teacher_bench.py: its jaxpr counts, against FLOPs derived by hand."""

import jax
import jax.numpy as jnp
import live_teacher_bench  # bench/ (on the path via tests/conftest.py)

from trainer.training import live_kd, live_teacher

V = 16


def test_counts_split_by_owner_and_multiply_scan_bodies():
    def program(x_2x4, w_4xV, t_3x4x5):
        student = x_2x4 @ w_4xV  # 2·2·V·4 = 256 FLOPs, V-wide

        def body(c, t_4x5):
            with jax.named_scope(live_teacher.SCOPE):
                h_2x5 = x_2x4 @ t_4x5  # 2·2·5·4 = 80 FLOPs, 3 times
            with jax.named_scope(live_kd.TEACHER_UNEMBED_SCOPE):
                u_2xV = jax.jit(lambda h: h[:, :4] @ w_4xV)(h_2x5)  # 256 FLOPs, 3 times
            return c + jnp.sum(u_2xV), None

        total, _ = jax.lax.scan(body, 0.0, t_3x4x5)
        return jnp.exp(student).sum() + total  # exp over 2·V elements

    args = (jnp.ones((2, 4)), jnp.ones((4, V)), jnp.ones((3, 4, 5)))
    counts = live_teacher_bench.jaxpr_counts(jax.make_jaxpr(program)(*args), V)
    assert counts["matmul_student"] == counts["matmul_student_V"] == 256
    assert counts["matmul_teacher_forward"] == 3 * 80
    assert counts["matmul_teacher_unembed"] == 3 * 256
    assert counts["matmul_total"] == 256 + 240 + 768
    assert counts["elementwise_V"] >= 2 * V  # the exp (and the slices/adds on [2, V])
