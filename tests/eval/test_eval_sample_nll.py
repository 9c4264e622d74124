"""The teacher's NLL of the student's own samples (trainer.evaluate.sample_nll).

A tiny student and teacher (model "tiny", V=512, different inits) and a held-out
store of 6 rows (T=16) made here; prompts of 5 tokens, 7 sampled tokens each.
The reference scores the returned samples with a direct forward of each model
and a float64 log-softmax, not with the scoring module under test.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from store import StoreSchema, create_store
from trainer.evaluate import sample_nll
from trainer.model import gemma3 as model
from trainer.model import model_config, model_io

V, T, P, N, ROWS = 512, 16, 5, 7, 6
TOK = {"sha256": "tok-sha", "vocab_size": V, "bos_id": 2, "eos_id": 1, "pad_id": 0}


def _save(path, seed, vocab=V, scale=1.0):
    cfg = model_config.get_config("tiny", vocab_size=vocab)
    params = model.init_params(cfg, jax.random.key(seed))
    params["embedding"] = params["embedding"] * scale  # Peakier: unlike the student's.
    model_io.save_model(path, cfg, params, {"tokenizer_sha256": "tok-sha"})
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_nll")
    tokens = np.random.default_rng(0).integers(3, V, (ROWS, T)).astype(np.int32)
    schema = StoreSchema(seq_len=T, k=0, vocab_size=V, rows_per_unit=3, tokenizer=TOK)
    w = create_store(str(root / "heldout"), schema, num_rows=ROWS, split="heldout")
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        w.write_unit(u, tokens=tokens[a:b])
    return dict(
        root=root,
        store=str(root / "heldout"),
        student=_save(root / "student", 0),
        teacher=_save(root / "teacher", 1, scale=3.0),
    )


def _nll64(path, samples):
    """Per row: −Σ log p(completion token | everything before), float64, by direct forward."""
    cfg, params, _ = model_io.load_model(path)
    out = []
    for prompt, completion in samples:
        row = np.asarray([prompt + completion], np.int32)
        hidden = model.forward(params, row, cfg).final_hidden_BxTxD
        logits = np.asarray(model.unembed(params, hidden, cfg), np.float64)[0]
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        # Token j is predicted at position j-1: the completion's tokens at P..P+N-1.
        out.append(-sum(logp[j - 1, row[0, j]] for j in range(len(prompt), row.shape[1])))
    return np.asarray(out)


def test_teacher_nll_of_samples_matches_a_direct_forward(world):
    got = sample_nll.teacher_nll_of_samples(
        world["student"], world["teacher"], world["store"], P, N, seed=3, batch_size=4,
        keep_samples=True,
    )  # fmt: skip
    samples = got["samples"]
    assert len(samples) == ROWS and all(len(p) == P and len(c) == N for p, c in samples)
    assert got["n"] == ROWS and got["tokens"] == ROWS * N
    teacher, student = _nll64(world["teacher"], samples), _nll64(world["student"], samples)
    np.testing.assert_allclose(got["teacher_nll"], teacher.sum() / (ROWS * N), rtol=1e-5)
    np.testing.assert_allclose(got["student_nll"], student.sum() / (ROWS * N), rtol=1e-5)
    np.testing.assert_allclose(
        got["reverse_kl"], (teacher - student).sum() / (ROWS * N), rtol=1e-4, atol=1e-6
    )
    # Rows are equally long: the ratio SE is the per-row mean's sample SE / tokens per row.
    np.testing.assert_allclose(got["teacher_nll_se"], teacher.std(ddof=1) / np.sqrt(ROWS) / N)
    # A row's sample depends on (seed, row, position) only, not on its batch.
    again = sample_nll.teacher_nll_of_samples(
        world["student"], world["teacher"], world["store"], P, N, seed=3, batch_size=6,
        keep_samples=True,
    )  # fmt: skip
    assert again["samples"] == samples and again["rows"] == got["rows"]


def test_the_student_as_its_own_teacher_has_zero_reverse_kl(world):
    got = sample_nll.teacher_nll_of_samples(
        world["student"], world["student"], world["store"], P, N, limit=4, batch_size=4
    )
    assert got["n"] == 4 and got["reverse_kl"] == 0.0
    assert got["teacher_nll"] == got["student_nll"] > 0


def test_bad_input_is_one_line_and_exit_2(world, tmp_path, capsys):
    other = _save(tmp_path / "other", 2, vocab=256)
    base = dict(
        student=world["student"], teacher=world["teacher"], store=world["store"], prompt_len=str(P)
    )
    cases = [
        (dict(teacher=other), "cannot score"),
        (dict(prompt_len=str(T)), "--prompt-len 16"),
        (dict(store=str(tmp_path / "missing")), "missing"),
        (dict(student=str(tmp_path / "missing")), "does not exist"),
    ]
    for change, match in cases:
        args = {**base, **change}
        argv = [x for k, v in args.items() for x in ("--" + k.replace("_", "-"), v)]
        assert sample_nll.main([*argv, "--max-new-tokens", str(N)]) == 2, match
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and match in err, err
