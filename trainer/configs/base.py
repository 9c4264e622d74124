"""Every trainer config field, with its meaning and default (the paper's values).

Concrete configs (tiny.py, gemma3_270m.py, ...) start from `base_config()` and
change what differs. `trainer.training.config.validate` checks the ranges.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The paper's recipe (docs/DESIGN.md §1) for a student; model/store/budget unset."""
    c = ml_collections.ConfigDict()
    c.method = "kd"  # nll | kd | hldc | hldf | opd | oprd (trainer.training.config.Method).
    c.run_dir = ""  # RUN_DIR: config.json, metrics.jsonl, checkpoints/, export/, tb/.
    c.seed = 0  # Seeds parameter init, regressor init and the data shuffle.

    # Not type-safe: model.remat holds a policy name, or a bool in configs written
    # before it was a policy (True: "full", False: "none").
    c.model = ml_collections.ConfigDict(type_safe=False)
    c.model.name = "tiny"  # trainer.model.model_config registry name of the student.
    c.model.vocab_size = 32000  # V; must equal the store's vocab (checked before compiling).
    c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16 (params stay fp32).
    # What each block keeps for the backward pass: none | full | dots_no_batch |
    # qkv_and_outputs (trainer.model.model_config.RematPolicy; bytes and time per
    # policy in docs/memory.md).
    c.model.remat = "none"
    # A model checkpoint (a run's export/) the student starts from instead of a random
    # init (the driver's rounds: python -m trainer.rounds); "": random init (seed).
    c.model.init_checkpoint = ""

    c.store = ml_collections.ConfigDict()
    c.store.url = ""  # Store path/URL (local, file://, memory://, gs://, s3://).
    c.store.allow_partial = False  # Train on committed units of an unfinished dump.
    c.store.tokenizer_sha256 = ""  # Expected tokenizer sha256; "" skips the check.

    c.teacher = ml_collections.ConfigDict()
    c.teacher.hidden_layer = 0  # Stored teacher layer for HLD (1-based; 0: unused).
    c.teacher.d_model = 0  # Teacher width d_T the regressor maps to (0: unused).
    # Live teacher (trainer.training.live_teacher): a model checkpoint (a trainer run's
    # export/, or teacher_dump.convert's output) run frozen inside the train step; every
    # teacher term then reads it instead of the store (which supplies tokens only).
    # "": the teacher signal is read from the store.
    c.teacher.checkpoint = ""
    # Add the live teacher's forward to the FLOPs budget (trainer.flops). The paper does
    # not charge the teacher (its signal is computed once, offline): False.
    c.teacher.charge_flops = False
    # Live KD over the teacher's top-K log-probs with loss.tail (what a stored top-K
    # costs a student, without storage rounding); 0: its full vocabulary.
    c.teacher.live_topk = 0
    c.student_layer = 0  # Student layer for HLD / OPRD (1-based); 0 means L_S // 2.

    # On-policy methods opd / oprd on rollouts (trainer.training.onpolicy).
    c.onpolicy = ml_collections.ConfigDict()
    c.onpolicy.opd_weight = 0.0  # oprd: weight β of its OPD term (0: the hidden term only).
    # GKD's λ: every batch's loss is λ·(on-policy terms, completion tokens) + (1−λ)·(the kd
    # objective on the rows' prompt tokens); 1: on-policy only.
    c.onpolicy.lam = 1.0
    # Student steps per round when rounds run through the store (python -m trainer.rounds:
    # rollouts of the round's first student train this many steps); the trainer alone
    # trains budget.value.
    c.onpolicy.staleness = 8
    # oprd: the teacher layers its hidden term matches, comma-separated ("9,17,26"; the
    # reference implementation's `all` is every layer 1..L_T written out, its `last` is
    # teacher.hidden_layer=L_T alone). Must hold teacher.hidden_layer, whose student layer
    # is student_layer; each other layer l_T gets the student layer
    # round(l_T · student_layer / teacher.hidden_layer) within 1..L_S (the same relative
    # depth: L_T/2 ↔ L_S/2 by default) and a linear regressor of its own. The term is the
    # mean of the per-layer normalized MSEs. "": teacher.hidden_layer alone (one layer).
    c.onpolicy.hidden_layers = ""

    c.data = ml_collections.ConfigDict()
    c.data.batch_size = 256  # Global batch (rows of T tokens) per step.
    c.data.seq_len = 2048  # T; must equal the store's seq_len (checked first).
    c.data.k = 128  # Top-k the store must hold (KD/HLD); 0: any k >= 1.
    c.data.samples = 0  # Sampled draws S the store must hold (loss.signal=sampled);
    # 0: any S >= 1.
    c.data.from_store = False  # True: take data.seq_len, data.k / data.samples,
    # model.vocab_size, teacher.hidden_layer and
    # teacher.d_model from the store's manifest instead of
    # checking them, and loss.signal where the store holds
    # only one of top-k and sampled logits.
    c.data.micro_batches = 1  # Gradient accumulation: each step splits data.batch_size
    # into this many equal micro-batches inside the jitted step
    # (same loss and gradients, less activation memory); must
    # divide the per-device batch (trainer.training.microbatch).
    c.data.num_threads = 2  # Grain reader threads per process (batch reads).
    c.data.prefetch_buffer_size = 4  # Batches read ahead per process.
    c.data.num_workers = 0  # >0: Grain worker processes instead of threads only.

    c.loss = ml_collections.ConfigDict()
    # Weight of the logit (KD) term; (1-α) goes to NLL. 0.7: it beats 0.9 in all 12 KD
    # cells of the paper's Tables 4-5, and on the demo store (k=32 of V=2048).
    c.loss.alpha = 0.7
    c.loss.alpha_schedule = (
        "constant"  # constant | linear | wsd (trainer.training.loss_options.AlphaSchedule).
    )
    c.loss.alpha_start = 0.0  # linear/wsd: α at step 0 of the phase (ramps up to alpha).
    c.loss.alpha_final = 0.0  # wsd: α at the end of the decay (from alpha).
    c.loss.tau = 1.0  # KD temperature; the KD term is scaled by τ².
    c.loss.gamma = 0.1  # Weight of the hidden-state term (HLDC).
    # What γ weighs (trainer.training.loss_options.HiddenReduction): mean | sum over the teacher
    # width D of the squared difference of the unit vectors. mean is the paper's (γ=0.1
    # there, at D=2560), in [0, 4/D]: the term then shrinks with D (γ=0.1 at the demo's
    # D=128 is ~4e-4 of the loss). sum is their squared distance, in [0, 4] at any D.
    # The trainer prints the term's share of the loss and gradient for HLDC/HLDF.
    c.loss.hidden_reduction = "mean"
    # Top-k tail mode: bucket | zero | renormalize (trainer.training.loss_options.TailMode). bucket keeps
    # the teacher's mass outside the top-k as one class, so the loss's optimum stays the
    # teacher; zero drops it and makes a perfect student of the loss worse than NLL at
    # small k (store.objective_penalty measures by how much; the trainer prints it).
    c.loss.tail = "bucket"
    c.loss.divergence = "forward_kl"  # forward_kl | reverse_kl | jsd.
    # Stored teacher signal of the KD term: topk | sampled (trainer.training.loss_options.Signal).
    # sampled: S draws from the teacher's full softmax, an unbiased estimate of the
    # full-vocabulary forward KL at tau=1 (loss.tail does not apply; tau != 1 and other
    # divergences are refused).
    # With a live teacher (teacher.checkpoint) the KD term reads it instead (topk: unused).
    c.loss.signal = "topk"
    c.loss.token_tile = 1024  # Tokens per logit tile (never [B,T,V] fp32 at once).

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 4e-4  # Peak learning rate η (grid: 1e-4, 4e-4, 16e-4).
    c.optim.warmup_steps = 1000  # Linear warm-up steps of the WSD schedule.
    c.optim.decay_fraction = 0.1  # Last fraction of steps decaying to η·final_lr_fraction.
    c.optim.final_lr_fraction = 0.01  # η/100 at the end of the decay.
    c.optim.b1 = 0.9  # AdamW β1.
    c.optim.b2 = 0.98  # AdamW β2.
    c.optim.eps = 1e-9  # AdamW ε.
    c.optim.weight_decay = 0.1  # AdamW decoupled weight decay (times the LR).
    c.optim.grad_clip = 0.0  # Global-norm clip; 0 disables (the paper does not clip).

    c.hldf = ml_collections.ConfigDict()
    c.hldf.p1 = 0.01  # Budget fraction of HLDF phase 1 (1%, 4% or 5%).
    # Phase-1 warm-up, then constant LR (docs/DESIGN.md §1). Must fit in phase 1's steps (the
    # trainer refuses otherwise, as the WSD schedule does): 1,000 needs ≥ 1,000 steps of
    # phase 1, e.g. hldf.p1=0.01 of ≥ ~13 OT for gemma3-270m at batch 256 × 2048.
    c.hldf.warmup_steps = 1000

    c.budget = ml_collections.ConfigDict()
    c.budget.unit = "ot"  # ot | flops (trainer.training.config.BudgetUnit).
    c.budget.value = 1.0  # The one compute budget; steps derive from trainer.flops.

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Data-parallel axis size; -1: all remaining devices.
    c.mesh.fsdp = 1  # FSDP axis size (params sharded, batch split too).
    c.mesh.tensor = 1  # Tensor-parallel axis size (heads / MLP / vocab).
    c.distributed = False  # Multi-process run: jax.distributed from JAX_COORDINATOR_ADDRESS,
    # JAX_NUM_PROCESSES, JAX_PROCESS_ID, else JAX's cluster
    # auto-detection (trainer.training.distributed; README).
    c.distributed_heartbeat_s = 100  # distributed: seconds without heartbeats before a process
    # counts as dead and every process aborts (JAX's default).
    c.distributed_init_timeout_s = 300  # distributed: seconds to wait for all processes to join.

    c.log_every = 50  # Steps between metrics lines (JSONL + TensorBoard).
    c.checkpoint_every = 1000  # Steps between Orbax checkpoints (and at the end).
    c.keep_checkpoints = 2  # Checkpoints kept on disk.
    c.peak_flops_per_device = 699e12  # For MFU; assumed H100-class bf16 peak (not measured).

    c.debug = ml_collections.ConfigDict()
    c.debug.kill_at_step = 0  # Fault injection for resume tests: SIGKILL self after
    # this global step (0: off).
    c.debug.kill_signal = "SIGKILL"  # What kill_at_step sends: SIGKILL (a crash) or
    # SIGINT / SIGTERM (a user stop: checkpoint + exit).
    return c
