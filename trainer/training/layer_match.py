"""Which student layer meets which teacher layer, and the regressors between them.

    l_S = student_layer(config, L_S)                        # teacher.hidden_layer's partner
    s_layers = student_layers(config, L_S, t_layers)        # OPRD's onpolicy.hidden_layers
    regressor = init_regressor(kind, rng, d_S, d_T, layers=phase.hidden_layers)

The paper matches the teacher's median layer with the student's (L_T/2 ↔ L_S/2:
`teacher.hidden_layer` ↔ `student_layer`). OPRD on several teacher layers keeps
that pair and gives every other teacher layer the student layer at the same
relative depth (`student_layers`), each through a regressor of its own: the
regressor tree is then {"layer_<l_T>": params} (`regressor_key`), and with one
layer it is that regressor's own tree, so one-layer runs (and their
checkpoints) are what they were before several layers existed.

Example: a 34-layer teacher at teacher.hidden_layer=17 and a 12-layer student
(student_layer 0: L_S//2 = 6). onpolicy.hidden_layers="9,17,26,34" matches
student layers 3 (9·6/17 = 3.2), 6, 9 (9.2) and 12: the teacher's last layer
meets the student's last.
"""

from __future__ import annotations

import jax

from trainer.model import regressors
from trainer.model.regressors import RegressorKind
from trainer.training.config import Method, oprd_layers


def student_layer(config, num_layers: int) -> int:
    """The student layer l_S compared with the teacher (config value, default L_S//2)."""
    return config.student_layer or num_layers // 2


def student_layers(config, num_layers: int, teacher_layers: tuple[int, ...]) -> tuple[int, ...]:
    """The student layer matched to each teacher layer: the same relative depth.

    teacher.hidden_layer l_T0 ↔ `student_layer` l_S0 (the pair the paper matches:
    L_T/2 ↔ L_S/2 by default); another teacher layer l_T gets round(l_T · l_S0 / l_T0)
    (halves up), within 1..L_S. Several teacher layers may share a student layer.
    """
    l_s0, l_t0 = student_layer(config, num_layers), int(config.teacher.hidden_layer)
    return tuple(
        l_s0 if l_t == l_t0 else min(max((2 * l_t * l_s0 + l_t0) // (2 * l_t0), 1), num_layers)
        for l_t in teacher_layers
    )


def hidden_flops_args(config, num_layers: int) -> dict:
    """trainer.flops.model_flops's hidden-term arguments: the student blocks HLDF phase 1 and
    OPRD run, the deepest teacher layer read, and OPRD's regressors (one per teacher layer)."""
    if config.method == Method.OPRD.value and config.onpolicy.hidden_layers:
        t_layers = oprd_layers(config)
        s_layers = student_layers(config, num_layers, t_layers)
        return dict(
            ht_blocks=max(s_layers),
            teacher_hidden_layer=max(t_layers),
            oprd_regressors=len(t_layers),
        )
    return dict(
        ht_blocks=student_layer(config, num_layers),
        teacher_hidden_layer=config.teacher.hidden_layer or None,
    )


def regressor_key(teacher_layer: int) -> str:
    """The regressor tree's key of a teacher layer's regressor (several hidden layers)."""
    return f"layer_{teacher_layer}"


def init_regressor(
    kind: RegressorKind | None, rng, d_student: int, d_teacher: int, layers: tuple[int, ...] = ()
):
    """Fresh regressor params ({} for none).

    Args:
        kind, rng, d_student, d_teacher: the regressor and its widths.
        layers: the phase's `hidden_layers`. Several: {regressor_key(l): params}, one
            regressor per teacher layer, each from its own split of `rng`; () or one: that
            regressor's params (the tree, and the init, of a one-layer run).
    """
    if kind is None:
        return {}
    if len(layers) > 1:
        rngs = jax.random.split(rng, len(layers))
        return {
            regressor_key(layer): regressors.init_regressor(kind, r, d_student, d_teacher)
            for layer, r in zip(layers, rngs, strict=True)
        }
    return regressors.init_regressor(kind, rng, d_student, d_teacher)


def regressor_logical_axes(kind: RegressorKind | None, regressor_params):
    """Logical axes of a regressor tree (for trainer.training.sharding), per layer or not."""
    if kind is None:
        return {}
    if regressor_params and all(k.startswith("layer_") for k in regressor_params):
        return {k: regressors.logical_axes(v) for k, v in regressor_params.items()}
    return regressors.logical_axes(regressor_params)
