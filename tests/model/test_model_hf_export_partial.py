"""export_hf killed mid-write leaves OUT.partial-PID; the next export removes it."""

import os
import subprocess
import sys

import jax

from trainer.model import gemma3 as model
from trainer.model import hf_export, model_config, model_io


def _tiny_checkpoint(path):
    cfg = model_config.get_config(
        "tiny",
        vocab_size=64,
        num_layers=2,
        d_model=32,
        mlp_dim=64,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
    )
    model_io.save_model(str(path), cfg, model.init_params(cfg, jax.random.key(0)))
    return str(path)


def test_partials_of_dead_exports_are_removed_live_ones_kept(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "hf"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # Its pid is free: what SIGKILL mid-write leaves behind.
    live = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        for pid in (dead.pid, os.getpid(), live.pid):  # own pid: reused after a restart
            (tmp_path / f"hf.partial-{pid}").mkdir()
            (tmp_path / f"hf.partial-{pid}" / "model.safetensors").write_bytes(b"half")
        (tmp_path / "hf.partial-notes").mkdir()  # not ours: no pid
        hf_export.export(ckpt, str(out))
        assert sorted(os.listdir(tmp_path)) == sorted(
            ["ckpt", "hf", f"hf.partial-{live.pid}", "hf.partial-notes"]
        )
        assert "model.safetensors" in os.listdir(out)
    finally:
        live.kill()
        live.wait(timeout=30)
