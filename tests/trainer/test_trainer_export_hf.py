"""A student trained a few steps by our trainer, exported with `trainer.export_hf`,
gives in `transformers` the logits our model gives (fp32, atol 1e-4: summation
order only), on rows longer than its sliding window; the run directory itself
is accepted as --checkpoint (its export/ is used)."""

import numpy as np
import pytest
import trainer_testlib as tl

from trainer import export_hf
from trainer.model import gemma3 as model
from trainer.model import model_io
from trainer.training import loop as train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_trained_student_logits_equal_in_transformers(tmp_path):
    store = tl.make_store(tmp_path / "store", num_rows=16)
    summary = train.run(tl.tiny_config("kd", store, tmp_path / "run", steps=3))
    assert summary["global_step"] >= 1
    assert (
        export_hf.main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    )
    cfg, params, _ = model_io.load_model(str(tmp_path / "run" / "export"))
    cfg = cfg.replace(dtype="float32")
    trained_norm = np.asarray(params["layers"]["pre_attn_norm"])
    assert np.abs(trained_norm).max() > 0  # Training moved the (zero-init) norm weights.
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 3 * cfg.sliding_window))
    ours = np.asarray(
        model.unembed(params, model.forward(params, tokens, cfg).final_hidden_BxTxD, cfg)
    )
    hf = transformers.Gemma3ForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
