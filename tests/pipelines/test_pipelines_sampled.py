"""`python -m pipelines.dump --samples S`: sampled logits in the store, resume byte-identical, refusals."""

import os
import shutil

import numpy as np
import pipelines_testlib as lib
import pytest

import store
from pipelines import dump, options
from pipelines.errors import OptionsError
from store import layout as store_layout
from store import ledger, snapshot

SAMPLES = 5


# (k, profile): top-k and draws in the exact profile; draws only in lean (the <= 1 KB/token set-up of store/lean.py).
@pytest.fixture(
    scope="module",
    params=[(lib.K, "exact"), (0, "lean")],
    ids=["exact-topk+sampled", "lean-sampled-only"],
)
def sampled_dump(request, corpus, tokenizer_path, teacher_path, tmp_path_factory):
    directory, _ = corpus
    url = str(tmp_path_factory.mktemp("sampled") / "store")
    k, profile = request.param
    argv = lib.dump_argv(
        os.path.join(directory, "*"),
        url,
        teacher_path,
        tokenizer_path,
        "--samples",
        str(SAMPLES),
        "--profile",
        profile,
    )
    argv[argv.index("--k") + 1] = str(k)
    return argv, dump.run_dump(argv), url


def test_store_holds_the_draws_of_the_bare_extraction(
    sampled_dump, corpus, tokenizer_path, teacher_path, tmp_path
):
    _, result, url = sampled_dump
    reader = store.StoreReader(url)
    assert reader.schema.samples == SAMPLES and result.plan.schema.samples == SAMPLES
    rows = lib.reference_rows(corpus[1], tokenizer_path)
    # The bare loop keys the draws by the same global rows, whatever the unit batching.
    bare_url = str(tmp_path / "bare")
    lib.bare_dump(bare_url, result.plan.schema, rows, teacher_path, result.plan.hidden_layers)
    lib.assert_stores_identical(url, bare_url)
    got = reader.read(np.arange(reader.num_rows), fields=("sampled",))
    np.testing.assert_array_equal(got["sampled_counts"].astype(int).sum(-1), SAMPLES)
    assert got["sampled_ids"].max() < lib.VOCAB


def test_resume_after_lost_commits_is_byte_identical(sampled_dump, tmp_path):
    argv, _, url = sampled_dump
    copy = str(tmp_path / "store")
    shutil.copytree(url, copy)
    kv = store_layout.open_kvstore(store_layout.normalize_url(copy))
    for unit in (0, 2):  # units whose rows are not first in their batch
        ledger.delete(kv, unit)
    ledger.delete_keys(kv, [snapshot.KEY])
    rerun = list(argv)
    rerun[rerun.index("--store") + 1] = copy
    assert dump.run_dump(rerun).counters["units_committed"] == 2
    lib.assert_stores_identical(url, copy)


@pytest.mark.parametrize(
    "extra, match",
    [
        (("--samples", "256"), r"--samples=256 must be in \[0, 255\]"),
        (("--samples", "-1"), r"--samples=-1 must be in \[0, 255\]"),
        (("--k", "0"), r"--k=0 must be a positive integer \(0 only with --samples > 0\)"),
        (
            ("--k", "0", "--samples", "4", "--top-p", "0.9"),
            "--top-p truncates the top-k but --k is 0",
        ),
    ],
)
def test_bad_sampling_flags_are_refused(
    corpus, tokenizer_path, teacher_path, tmp_path, extra, match
):
    argv = lib.dump_argv(
        os.path.join(corpus[0], "*"), str(tmp_path / "s"), teacher_path, tokenizer_path
    )
    argv = [a for a in argv]
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    with pytest.raises(OptionsError, match=match):
        dump.build_pipeline(argv, read_ledgers=False)
    assert not os.path.exists(tmp_path / "s")


def test_samples_without_teacher_are_refused(corpus, tokenizer_path, tmp_path):
    base = [
        "--input",
        os.path.join(corpus[0], "*"),
        "--store",
        str(tmp_path / "s"),
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "32",
    ]
    with pytest.raises(OptionsError, match="^--samples only apply with --teacher"):
        options.parse(base + ["--samples", "4"])
