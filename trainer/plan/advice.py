"""What to change when a plan does not fit: one line naming the knobs, cheapest first.

For the trainer's step the knobs are the ones `python -m trainer` takes
(docs/memory.md measures each):

1. `data.micro_batches`: more micro-batches of the same global batch (the
   activations are one micro-batch's; FLOPs unchanged). Only counts that
   divide the rows per batch shard are offered, as the trainer requires.
2. a stronger `model.remat` policy, in the order of the bytes each keeps
   per token: none > dots_no_batch > qkv_and_outputs > full (each costs
   some recomputation; `full` the most).
3. `mesh.fsdp` over every device when the mesh still has data-parallel
   replicas of the parameters; else a larger slice.
4. a smaller batch: the largest that fits, when the search found it.

When the search found the largest fitting rows L at M micro-batches, the
micro-batches that keep the requested batch with at most L / M rows per
micro-batch are named too, marked as estimated (activation memory is close
to linear in the rows of one micro-batch; the parameters, optimizer state
and gradient accumulators do not grow with it, so the estimate errs safe).

For the dump's extraction step: `--params fsdp`, a smaller `--token-tile`,
fewer rows per device.
"""

from __future__ import annotations

from trainer.model.model_config import RematPolicy

# Policies by what each keeps for the backward pass, most first (docs/memory.md).
REMAT_ORDER = (
    RematPolicy.NONE.value,
    RematPolicy.DOTS_NO_BATCH.value,
    RematPolicy.QKV_AND_OUTPUTS.value,
    RematPolicy.FULL.value,
)


def stronger_remat(policy: str) -> list[str]:
    """The policies that keep less than `policy`, lightest first."""
    return list(REMAT_ORDER[REMAT_ORDER.index(policy) + 1 :]) if policy in REMAT_ORDER else []


def more_micro_batches(rows: int, micro_batches: int) -> int | None:
    """The next micro-batch count above `micro_batches` that divides `rows`, if any."""
    for m in range(micro_batches + 1, rows + 1):
        if rows % m == 0:
            return m
    return None


def micro_batches_to_fit(rows: int, micro_batches: int, largest: int) -> int | None:
    """Fewest micro-batches dividing `rows` with at most largest / micro_batches rows each.

    Args:
        rows: the requested rows per batch shard.
        micro_batches: the micro-batches the search compiled with.
        largest: the largest rows per shard that fit at `micro_batches`.
    """
    per_micro = largest // micro_batches
    if per_micro < 1:
        return None
    for m in range(micro_batches + 1, rows + 1):
        if rows % m == 0 and rows // m <= per_micro:
            return m
    return None


def _train_knobs(result: dict) -> list[str]:
    knobs = []
    rows, micro = result["rows_per_shard"], result.get("micro_batches", 1)
    more = more_micro_batches(rows, micro)
    if more:
        knobs.append(f"--set data.micro_batches={more}")
    stronger = stronger_remat(result.get("remat", ""))
    if stronger:
        knobs.append(f"--set model.remat={'|'.join(stronger)}")
    mesh = result.get("mesh", {})
    if mesh.get("data", 1) > 1:
        knobs.append(
            f"--set mesh.fsdp={mesh.get('data', 1) * mesh.get('fsdp', 1)} --set mesh.data=1"
        )
    else:
        knobs.append("a larger slice (mesh.fsdp already spans every device)")
    return knobs


def advice(result: dict) -> str:
    """One line: what fits, or what to change (the plan's JSON, without "advice")."""
    shards = result["batch_shards"]
    rows = result["rows_per_shard"]
    largest = result["largest_fitting_rows"]
    if result["fits"]:
        extra = ""
        if largest and largest > rows:
            extra = f"; up to {largest} rows per shard fit (global batch {largest * shards})"
        return f"fits at {rows} rows per shard{extra}"
    if result["target"] == "train":
        knobs = _train_knobs(result)
    else:
        knobs = []
        if result.get("params") == "replicated":
            knobs.append("--params fsdp")
        knobs.append("a smaller --token-tile")
    knobs.append("a chip with more HBM")
    try_ = f"try {', '.join(knobs)}"
    if largest:
        keep = ""
        if result["target"] == "train":
            micro = result.get("micro_batches", 1)
            m = micro_batches_to_fit(rows, micro, largest)
            if m:
                keep = (
                    f"; to keep the batch, --set data.micro_batches={m} ({rows // m} rows per "
                    f"micro-batch, estimated from the {largest // micro} that fit)"
                )
        return (
            f"does not fit at {rows} rows per shard; the largest that fits is {largest} rows "
            f"per shard (global batch {largest * shards}){keep}; or {try_}"
        )
    if largest == 0:
        least = result.get("row_step", 1)
        return f"does not fit even at {least} row{'s' if least > 1 else ''} per shard: {try_}"
    return f"does not fit at {rows} rows per shard: {try_}"
