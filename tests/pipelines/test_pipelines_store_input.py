"""`--input-store`: a tokens store (rollouts with a loss_mask) scored row for row, no re-tokenizing.

The Beam dump is compared with a bare loop (teacher_dump.extract_rows + StoreWriter.write_unit on
the input's rows), so the rows, the copied mask and the teacher signal are all checked at once.
"""

import json
import os
import shutil

import numpy as np
import pipelines_testlib as lib
import pytest

import store
import teacher_dump
from pipelines import dump
from store import layout as store_layout
from store import ledger, snapshot
from store.verify import verify_store
from trainer.model import tokenizer

INPUT_ROWS = 20
INPUT_UNIT = 3  # not the output's unit size: output unit u reads input rows [8u, 8u + 8)


def _tok_info(tokenizer_path):
    with open(tokenizer_path, "rb") as f:
        return tokenizer.info_from_bytes(f.read())


def _rollouts(url, tok_info, loss_mask=True, num_rows=INPUT_ROWS, seed=0, complete=True):
    """A tokens store of prompt-then-completion rows (the last row all padding, mask 0)."""
    schema = store.StoreSchema(
        seq_len=lib.SEQ_LEN,
        k=0,
        vocab_size=lib.VOCAB,
        rows_per_unit=INPUT_UNIT,
        tokenizer=tok_info,
        packing={"rule": "rollouts"},
        loss_mask=loss_mask,
    )
    w = store.create_store(url, schema, num_rows=num_rows)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, lib.VOCAB, (num_rows, lib.SEQ_LEN)).astype(np.int32)
    start = rng.integers(4, lib.SEQ_LEN - 4, num_rows)
    mask = (np.arange(lib.SEQ_LEN)[None] >= start[:, None]).astype(np.uint8)
    if num_rows:
        tokens[-1], mask[-1] = tok_info["pad_id"], 0
    for u in range(w.num_units - (0 if complete else 1)):
        a, b = w.unit_rows(u)
        w.write_unit(u, tokens=tokens[a:b], loss_mask=mask[a:b] if loss_mask else None)
    return str(url), tokens, mask


def _argv(input_url, out_url, teacher_path, *extra):
    return [
        "--input-store",
        input_url,
        "--store",
        out_url,
        "--teacher",
        teacher_path,
        "--k",
        str(lib.K),
        "--rows-per-unit",
        str(lib.ROWS_PER_UNIT),
        "--batch-size",
        str(lib.BATCH),
        "--progress-interval",
        "0",
        *extra,
    ]


def _bare(url, schema, tokens, mask, teacher_path, layers):
    """The non-Beam reference of a scored rollout store."""
    teacher = teacher_dump.load_teacher(teacher_path)
    writer = store.create_store(url, schema, num_rows=len(tokens))
    for unit in range(writer.num_units):
        a, b = writer.unit_rows(unit)
        signal = teacher_dump.loop.concat_batches(
            teacher_dump.extract_rows(
                teacher,
                tokens[a:b],
                batch_size=lib.BATCH,
                k=schema.k,
                layers=layers,
                samples=schema.samples,
                row_ids=np.arange(a, b),
                token_logprob=schema.token_logprob,
            )
        )
        writer.write_unit(unit, tokens=tokens[a:b], loss_mask=mask[a:b], **signal)


@pytest.fixture(scope="module")
def scored(tokenizer_path, teacher_path, tmp_path_factory):
    """Rollouts and one --input-store dump of them: (argv, result, input url, tokens, mask, out url)."""
    d = tmp_path_factory.mktemp("store_input")
    in_url, tokens, mask = _rollouts(d / "rollouts", _tok_info(tokenizer_path))
    out_url = str(d / "scored")
    argv = _argv(in_url, out_url, teacher_path)
    return argv, dump.run_dump(argv), in_url, tokens, mask, out_url


def test_rows_mask_and_signal_are_the_bare_loops(scored, teacher_path, tmp_path):
    _, result, in_url, tokens, mask, out_url = scored
    schema = result.plan.schema
    # auto: the input has a loss_mask, so the teacher's log-prob of each realized token is stored.
    assert schema.loss_mask and schema.token_logprob and schema.seq_len == lib.SEQ_LEN
    assert schema.packing["rule"] == "input_store" and schema.packing["source"]["num_rows"] == 20
    r = store.StoreReader(out_url)
    assert r.num_rows == INPUT_ROWS and r.manifest["format_version"] == 2
    out = r.read(np.arange(INPUT_ROWS))
    np.testing.assert_array_equal(out["tokens"], tokens)  # row r out = row r in
    np.testing.assert_array_equal(out["loss_mask"], mask)
    assert out["token_logprob"].dtype == np.float32 and (out["token_logprob"][:, -1] == 0).all()
    assert result.counters["units_committed"] == 3 and result.counters["rows"] == INPUT_ROWS
    bare_url = str(tmp_path / "bare")
    _bare(bare_url, schema, tokens, mask, teacher_path, result.plan.hidden_layers)
    lib.assert_stores_identical(out_url, bare_url)
    # Where the realized token is in the stored top-k, both log-probs are the teacher's one value
    # (the top-k is stored as float16 by the exact profile).
    hit = out["topk_ids"][:, :-1] == tokens[:, 1:, None]
    rows, pos = np.nonzero(hit.any(-1))
    slot = hit[rows, pos].argmax(-1)
    assert rows.size > 0
    np.testing.assert_allclose(
        out["topk_logprobs"][rows, pos, slot], out["token_logprob"][rows, pos], rtol=2**-10
    )
    assert verify_store(out_url)["ok"]


def test_kill_and_resume_rewrites_the_lost_units(scored, tmp_path):
    argv, _, _, _, _, out_url = scored
    before = lib.store_arrays(out_url)
    copy = str(tmp_path / "scored")
    shutil.copytree(out_url, copy)
    kv = store_layout.open_kvstore(store_layout.normalize_url(copy))
    for unit in (0, 2):  # a crash lost these commits (and the final compaction)
        ledger.delete(kv, unit)
    ledger.delete_keys(kv, [snapshot.KEY])
    rerun = list(argv)
    rerun[rerun.index("--store") + 1] = copy
    again = dump.run_dump(rerun)
    assert again.counters["units_committed"] == 2 and again.counters["units_already_committed"] == 1
    lib.assert_stores_identical(out_url, copy)
    noop = dump.run_dump(argv)
    assert noop.counters.get("units_committed", 0) == 0
    after = lib.store_arrays(out_url)
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)


def test_compact_sampled_without_token_logprob(scored, teacher_path, tmp_path):
    _, _, in_url, tokens, mask, _ = scored
    out_url = str(tmp_path / "compact")
    extra = ("--profile", "compact", "--samples", "4", "--token-logprob", "off")
    result = dump.run_dump(
        _argv(in_url, out_url, teacher_path, *extra, "--hidden-layers", "1", "2")
    )
    schema = result.plan.schema
    assert schema.loss_mask and not schema.token_logprob and schema.hidden_layers == (1, 2)
    bare_url = str(tmp_path / "bare")
    _bare(bare_url, schema, tokens, mask, teacher_path, (1, 2))
    lib.assert_stores_identical(out_url, bare_url)


def test_plans_of_other_inputs(tokenizer_path, teacher_path, tmp_path):
    tok = _tok_info(tokenizer_path)
    plain, *_ = _rollouts(tmp_path / "plain", tok, loss_mask=False)
    plan = dump.build_pipeline(_argv(plain, str(tmp_path / "o"), teacher_path), False)[1]
    # No mask in, no mask out (both read as all ones), and auto leaves token_logprob off.
    assert not plan.schema.loss_mask and not plan.schema.token_logprob
    plan = dump.build_pipeline(
        _argv(plain, str(tmp_path / "o"), teacher_path, "--k", "0", "--token-logprob", "on"), False
    )[1]
    assert plan.schema.k == 0 and plan.schema.token_logprob
    assert not os.path.exists(tmp_path / "o")  # planning creates nothing


def _cli(capsys, argv):
    rc = dump.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def _teacher_with_tokenizer(teacher_path, tmp_path, sha):
    path = str(tmp_path / "teacher_tok")
    shutil.copytree(teacher_path, path)
    meta_path = os.path.join(path, "metadata.json")
    with open(meta_path) as f:
        meta = json.load(f)
    with open(meta_path, "w") as f:
        json.dump(dict(meta, tokenizer_sha256=sha), f)
    return path


def test_bad_inputs_get_one_line_and_exit_2(
    tokenizer_path, teacher_path, wrong_vocab_teacher_path, tmp_path, capsys
):
    tok = _tok_info(tokenizer_path)
    good, *_ = _rollouts(tmp_path / "good", tok)
    os.makedirs(tmp_path / "not_a_store")
    (tmp_path / "not_a_store" / "notes.txt").write_text("hi")
    empty, *_ = _rollouts(tmp_path / "empty", tok, num_rows=0)
    partial, *_ = _rollouts(tmp_path / "partial", tok, complete=False)
    other_tok, *_ = _rollouts(tmp_path / "other_tok", dict(tok, sha256="0" * 64))
    plain, *_ = _rollouts(tmp_path / "plain", tok, loss_mask=False)  # auto: no token_logprob
    out = str(tmp_path / "out")
    cases = [
        (_argv(str(tmp_path / "missing"), out, teacher_path), "--input-store: no store at"),
        (_argv(str(tmp_path / "not_a_store"), out, teacher_path), "--input-store: no store at"),
        (_argv(empty, out, teacher_path), "has no rows"),
        (_argv(partial, out, teacher_path), "--input-store is not complete"),
        (_argv(good, out, wrong_vocab_teacher_path), "has vocab_size=384 but teacher"),
        (
            _argv(other_tok, out, _teacher_with_tokenizer(teacher_path, tmp_path, tok["sha256"])),
            "was trained with tokenizer sha256",
        ),
        (_argv(good, out, teacher_path, "--seq-len", "64"), "--seq-len=64 but --input-store"),
        (_argv(good, good, teacher_path), "--input-store must differ from --store"),
        (_argv(good, out, teacher_path, "--input", "x.txt"), "--input read text"),
        (_argv(good, out, teacher_path, "--tokenizer", tokenizer_path), "--tokenizer read text"),
        (["--input-store", good, "--store", out], "--input-store needs --teacher"),
        (_argv(good, out, teacher_path, "--k", "0", "--token-logprob", "off"), "--k=0 must be"),
        (_argv(plain, out, teacher_path, "--k", "0"), "--k 0 leaves no teacher signal"),
    ]
    for argv, match in cases:
        rc, err = _cli(capsys, argv)
        assert rc == 2 and len(err) == 1 and match in err[0], (argv, err)
    assert not os.path.exists(out)


def test_a_different_input_is_refused_on_resume(scored, tokenizer_path, tmp_path, capsys):
    """The next round's rollouts written to the same URL: the manifest's input fingerprint differs."""
    argv, _, in_url, *_ = scored
    other, *_ = _rollouts(tmp_path / "next_round", _tok_info(tokenizer_path), seed=1)
    rerun = list(argv)
    rerun[rerun.index("--input-store") + 1] = other
    rc, err = _cli(capsys, rerun)
    assert rc == 2 and len(err) == 1
    assert "made by a different dump" in err[0] and "packing.source.content_sha256" in err[0]
