"""Orbax checkpoints of everything a run needs to resume bit-exactly.

A checkpoint (RUN_DIR/checkpoints/<global step>/) holds three items:
  * `state`: the TrainState pytree (params, regressor, optimizer, RNG, step);
  * `data`:  the Grain iterator state (JSON), so the next batch is the same;
  * `meta`:  {"phase", "global_step", "cumulative_flops"} (JSON). The phase is
    read first because the TrainState's structure depends on it (HLDF phase 2
    has no regressor and a fresh optimizer).
Saves are synchronous: when `save` returns the checkpoint is durable, so a
SIGKILL can never leave "the last checkpoint" half written.

Multi-process runs: every process calls `save`/`restore` (Orbax writes each
process's shards of `state`, and the JSON items from process 0 alone). Every
process then resumes from process 0's `data` item, which is right because
the per-host iterators advance in lockstep (one batch per step each; the
state is a position, not a row list); `save` checks that they agree.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from trainer.model.errors import ModelIOError


class Checkpointer:
    """Saves/restores run checkpoints under RUN_DIR/checkpoints.

    Args:
        run_dir: the run directory.
        keep: checkpoints kept on disk (older ones are deleted).
    """

    def __init__(self, run_dir: str, keep: int = 2):
        self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def latest_step(self) -> int | None:
        """Global step of the newest checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, global_step: int, state, data_state: dict, meta: dict) -> None:
        """Writes a checkpoint (blocking until durable)."""
        if jax.process_count() > 1:
            _check_same_on_all_processes(data_state)
        self._manager.save(
            global_step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore_meta(self, global_step: int) -> dict:
        """The `meta` item of a checkpoint (phase, global_step, cumulative_flops)."""
        return self._manager.restore(
            global_step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )["meta"]

    def restore(self, global_step: int, abstract_state):
        """Restores (state, data_state) onto the shardings of `abstract_state`.

        Args:
            global_step: which checkpoint.
            abstract_state: a pytree of jax.ShapeDtypeStruct with `.sharding`
                (e.g. from jax.eval_shape + the trainer's shardings).

        Raises:
            ModelIOError: the checkpoint's tree does not match this config.
        """
        try:
            restored = self._manager.restore(
                global_step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError) as e:
            raise ModelIOError(
                f"checkpoint {global_step} in {self.directory} does not match this config "
                f"({str(e).splitlines()[0][:200]}); resume with the run's own config.json "
                f"or use a fresh run_dir"
            ) from None
        return restored["state"], restored["data"]

    def close(self) -> None:
        """Releases the manager's resources."""
        self._manager.close()


def _check_same_on_all_processes(data_state: dict) -> None:
    """Fails if the processes' iterator states differ (only process 0's is saved)."""
    digest = hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).digest()
    multihost_utils.assert_equal(
        np.frombuffer(digest, np.uint8),
        "data iterator states differ between processes; a checkpoint would resume "
        "all of them from process 0's position",
    )


def abstract_like(tree, shardings):
    """ShapeDtypeStructs of `tree` (arrays or eval_shape output) with given shardings."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
