"""A k=0 rollout store: `--input-store ... --k 0` keeps token_logprob and/or named hidden layers.

OPD through the store reads only `token_logprob`, OPRD only its hidden layers: the top-k a
rollout dump used to write (k >= 1) is bytes nobody reads. Each k=0 store here is compared
with the k=K dump of the same rollouts (the arrays both hold, byte for byte) and with the
bare loop; the bytes per token the top-k cost are measured on disk.
"""

import os

import numpy as np
import pipelines_testlib as lib
import pytest
from test_pipelines_store_input import _argv, _rollouts, _tok_info

import store
import teacher_dump
from pipelines import dump

LAYERS = ("--hidden-layers", "1", "2")


def _stored_bytes(url):
    """Bytes on disk of a store's arrays (the manifest and commit records left out)."""
    total = 0
    for root, _, files in os.walk(url):
        if "ledger" in root.split(os.sep):
            continue
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f != "zarr.json")
    return total


@pytest.fixture(scope="module")
def dumps(tokenizer_path, teacher_path, tmp_path_factory):
    """{name: (url, schema)} of three dumps of one rollout store, and its url / tokens / mask."""
    d = tmp_path_factory.mktemp("rollout_k0")
    in_url, tokens, mask = _rollouts(d / "rollouts", _tok_info(tokenizer_path))
    out = {}
    for name, extra in (
        ("topk", LAYERS),  # what the rounds driver wrote before: top-K + token_logprob + layers
        ("k0", ("--k", "0", *LAYERS)),  # OPD + OPRD: token_logprob + layers
        ("hidden_only", ("--k", "0", "--token-logprob", "off", *LAYERS)),  # OPRD alone
    ):
        url = str(d / name)
        out[name] = (url, dump.run_dump(_argv(in_url, url, teacher_path, *extra)).plan.schema)
    return out, in_url, tokens, mask


def test_k0_stores_hold_the_same_signal_without_the_topk(dumps, teacher_path, tmp_path):
    out, _, tokens, mask = dumps
    topk_url, topk_schema = out["topk"]
    assert topk_schema.k == lib.K and topk_schema.token_logprob
    rows = np.arange(len(tokens))
    want = store.StoreReader(topk_url).read(rows)
    for name, fields in (
        ("k0", ("tokens", "loss_mask", "token_logprob", "hidden/1", "hidden/2")),
        ("hidden_only", ("tokens", "loss_mask", "hidden/1", "hidden/2")),
    ):
        url, schema = out[name]
        assert schema.k == 0 and schema.samples == 0 and schema.hidden_layers == (1, 2)
        assert schema.token_logprob == (name == "k0") and schema.loss_mask
        got = store.StoreReader(url).read(rows)
        assert sorted(got) == sorted(fields), name
        for field in fields:  # hidden_only runs 2 of 2 teacher blocks and no unembedding
            np.testing.assert_array_equal(got[field], want[field], err_msg=f"{name}: {field}")
        np.testing.assert_array_equal(got["tokens"], tokens)
        np.testing.assert_array_equal(got["loss_mask"], mask)
    # The Beam dump of k=0 is the bare loop's (teacher_dump.extract_rows with k=0).
    bare = str(tmp_path / "bare")
    schema = out["k0"][1]
    teacher = teacher_dump.load_teacher(teacher_path)
    writer = store.create_store(bare, schema, num_rows=len(tokens))
    for unit in range(writer.num_units):
        a, b = writer.unit_rows(unit)
        signal = teacher_dump.loop.concat_batches(
            teacher_dump.extract_rows(
                teacher, tokens[a:b], batch_size=lib.BATCH, k=0, layers=(1, 2), token_logprob=True
            )
        )
        writer.write_unit(unit, tokens=tokens[a:b], loss_mask=mask[a:b], **signal)
    lib.assert_stores_identical(out["k0"][0], bare)


def test_bytes_per_token_saved(dumps):
    out, _, tokens, _ = dumps
    n_tokens = tokens.size
    per_token = {name: _stored_bytes(url) / n_tokens for name, (url, _) in out.items()}
    print(
        f"\nbytes/token on disk (exact, k={lib.K}, V={lib.VOCAB}, D=32, 2 layers): "
        + ", ".join(f"{k}={v:.1f}" for k, v in per_token.items())
        + f"; the top-k costs {per_token['topk'] - per_token['k0']:.1f} B/token"
    )
    assert per_token["hidden_only"] < per_token["k0"] < per_token["topk"]


def test_a_k0_dump_without_any_signal_is_refused_in_one_line(dumps, teacher_path, tmp_path, capsys):
    _, in_url, _, _ = dumps
    out = str(tmp_path / "none")
    for extra, needle in (
        (("--k", "0", "--token-logprob", "off", "--hidden-layers"), "--k=0 must be"),
        (("--k", "0", "--token-logprob", "off"), "--k=0 must be"),
    ):
        rc = dump.main(_argv(in_url, out, teacher_path, *extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (extra, err)
        assert "--hidden-layers L ..." in err[0]
    assert not os.path.exists(out)
