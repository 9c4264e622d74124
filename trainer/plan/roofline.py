"""The lower bound on step time from the work a step must do and the chip's peaks.

A step cannot finish faster than its FLOPs at the chips' peak bf16 rate, nor
faster than each device reading its arguments and writing its outputs once at
the HBM bandwidth (temporaries only add to that). The bound is the larger of
the two; its tokens/s is an upper bound no run can beat. FLOPs come from
`trainer.flops` (the model definition), never from `cost_analysis()`, which
counts a `lax.scan` body once.
"""

from __future__ import annotations


def roofline(
    flops_per_step: float,
    tokens_per_step: int,
    bytes_per_device: int,
    num_devices: int,
    peak_flops_per_device: float,
    hbm_bytes_per_s: float,
) -> dict:
    """The roofline lower bound of one step.

    Args:
        flops_per_step: useful FLOPs of the whole step (all devices).
        tokens_per_step: global tokens of the step.
        bytes_per_device: HBM bytes each device must move at least (arguments + outputs).
        num_devices: devices sharing the FLOPs.
        peak_flops_per_device: peak bf16 FLOP/s of one device.
        hbm_bytes_per_s: HBM bandwidth of one device.

    Returns:
        {"compute_s", "memory_s", "step_s" (the max), "bound" ("compute" | "memory"),
        "tokens_per_s" (at step_s), "flops_per_step"}.
    """
    compute_s = flops_per_step / (num_devices * peak_flops_per_device)
    memory_s = bytes_per_device / hbm_bytes_per_s
    step_s = max(compute_s, memory_s)
    return {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "step_s": step_s,
        "bound": "compute" if compute_s >= memory_s else "memory",
        "tokens_per_s": tokens_per_step / step_s if step_s > 0 else float("inf"),
        "flops_per_step": flops_per_step,
    }
