"""The TPU planner: AOT-compiles the real train / dump step for a topology, nothing allocated.

`python -m trainer.plan {train,dump} ... --topology v5p:2x2x1` builds the real
mesh and shardings, lowers the trainer's `PhaseRunner.step` (or the dump's
extraction step) with abstract arrays (`jax.ShapeDtypeStruct` + `NamedSharding`)
and runs the real XLA TPU compiler from libtpu, which works without a TPU.
It reports per-chip argument / temporary / output bytes against the chip's
HBM, fits or not, the largest per-chip batch that fits (bisection on
compiles), the compile time, and a roofline lower bound on the step time from
`trainer.flops` (never from `cost_analysis()`, which counts a scan body once).

Modules, one concept each:
    chips     the chip table (HBM, peak bf16 FLOP/s, HBM bandwidth, public source)
              and topology names ("v5e:2x2")
    devices   abstract TPU devices from libtpu, or forced host CPU devices
    compile   compile a function on abstract arguments; its memory figures
    targets   what is compiled: the trainer step (a config + overrides) and the
              dump's extraction step (teacher options), per per-chip batch
    search    the largest per-chip batch that fits (bisection on compiles)
    roofline  the lower bound on step time from FLOPs, bytes and the chip
    report    one plan: run the target, judge the fit, format text / JSON
    advice    what to change when a plan does not fit (micro-batches, remat
              policy, fsdp, batch), cheapest first
    __main__  the CLI
"""
