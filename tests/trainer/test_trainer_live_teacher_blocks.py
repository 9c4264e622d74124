"""A live teacher whose logits no phase reads is held only up to the layer it is read at."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import trainer_testlib as tl

from trainer.model import gemma3 as model
from trainer.model import model_config, model_io
from trainer.training import live_teacher, methods, sharding

TEACHER = "tiny-7"  # 7 blocks, d=64 (one global block, the 6th).


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "ckpt"
    cfg = model_config.get_config(TEACHER, vocab_size=tl.VOCAB)
    model_io.save_model(path, cfg, model.init_params(cfg, jax.random.key(7)))
    return str(path)


def _config(method, teacher_dir, **sets):
    sets = {"teacher.checkpoint": teacher_dir, "teacher.d_model": 64, **sets}
    return tl.tiny_config(method, "/nonexistent", "/nonexistent", **sets)


def _blocks(config):
    return live_teacher.blocks_needed(methods.phases(config, 4))


def test_blocks_needed_per_method(teacher_dir):
    # OPRD without OPD and off-policy terms: only the hidden state, at its layer.
    assert _blocks(_config("oprd", teacher_dir, **{"teacher.hidden_layer": 3})) == 3
    # Several OPRD layers: the deepest of them.
    layers = {"teacher.hidden_layer": 3, "onpolicy.hidden_layers": "3,5"}
    assert _blocks(_config("oprd", teacher_dir, **layers)) == 5
    # HLDC without the KD term (α = 0): the hidden state only; the student's NLL needs no teacher.
    assert (
        _blocks(_config("hldc", teacher_dir, **{"teacher.hidden_layer": 5, "loss.alpha": 0})) == 5
    )
    # Anything that reads the teacher's logits holds all of it.
    assert _blocks(_config("oprd", teacher_dir, **{"onpolicy.opd_weight": 1.0})) is None
    assert _blocks(_config("opd", teacher_dir)) is None
    assert _blocks(_config("kd", teacher_dir)) is None
    assert _blocks(_config("hldf", teacher_dir)) is None  # phase 2 is KD
    assert live_teacher.blocks_needed(methods.phases(tl.tiny_config("kd", "/x", "/y"), 4)) is None


def test_cut_teacher_gives_the_whole_teachers_hidden_state(teacher_dir):
    config = _config("oprd", teacher_dir, **{"teacher.hidden_layer": 3})
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    whole = live_teacher.load(config, mesh)
    cut = live_teacher.load(config, mesh, _blocks(config))
    assert (whole.model_cfg.num_layers, cut.model_cfg.num_layers) == (7, 3)
    assert jax.tree.leaves(cut.params["layers"])[0].shape[0] == 3
    assert cut.fingerprint == whole.fingerprint  # the checkpoint's, not the kept part's
    abstract = live_teacher.abstract(config, mesh, 3)
    assert jax.tree.map(lambda a: a.shape, abstract.params) == jax.tree.map(
        lambda a: a.shape, cut.params
    )
    tokens = np.random.default_rng(0).integers(0, tl.VOCAB, (2, 12)).astype(np.int32)
    got = live_teacher.forward(cut.params, tokens, cut.model_cfg, hidden_layers=(3,), logits=False)
    want = live_teacher.forward(
        whole.params, tokens, whole.model_cfg, hidden_layers=(3,), logits=False
    )
    np.testing.assert_array_equal(np.asarray(got.hidden[3]), np.asarray(want.hidden[3]))
