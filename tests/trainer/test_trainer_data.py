"""trainer.training.data: fields per method, determinism, exact resume, host sharding."""

import pickle

import numpy as np
import pytest
import trainer_testlib as tl

from trainer.model.errors import ConfigError
from trainer.training import data, methods


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tl.make_store(tmp_path_factory.mktemp("store") / "s", num_rows=48)


def test_fields_per_method_and_phase():
    def fields(method):
        config = tl.tiny_config(method, "/s", "/r")
        return [p.fields for p in methods.phases(config, 4)]

    assert fields("nll") == [("tokens",)]
    assert fields("kd") == [("tokens", "topk")]
    assert fields("hldc") == [("tokens", "topk", "hidden/2")]
    assert fields("hldf") == [("tokens", "hidden/2"), ("tokens", "topk")]
    with pytest.raises(ValueError, match="unknown store field 'logits'"):
        data.StoreSource("/s", ("tokens", "logits"))


def test_reads_only_requested_fields(store):
    nll = data.StoreSource(store, ("tokens",))
    hld = data.StoreSource(store, ("tokens", "topk", f"hidden/{tl.LAYER}"))
    assert set(nll.read_indices([0, 3])) == {"tokens"}
    batch = hld.read_indices([5, 1])
    hidden = f"hidden/{tl.LAYER}"
    assert set(batch) == {"tokens", "topk/ids", "topk/logprobs", hidden}
    assert batch["tokens"].shape == (2, tl.SEQ) and batch["tokens"].dtype == np.int32
    assert batch["topk/ids"].shape == (2, tl.SEQ, tl.K)
    # Loader-style reads: stored dtypes, activations RMS-normalised per token.
    assert batch["topk/ids"].dtype == np.uint16 and batch["topk/logprobs"].dtype == np.float16
    assert batch[hidden].shape == (2, tl.SEQ, 64) and batch[hidden].dtype == np.float16
    rms = np.sqrt(np.mean(batch[hidden].astype(np.float32) ** 2, -1))
    np.testing.assert_allclose(rms, 1.0, rtol=2e-3)
    np.testing.assert_array_equal(hld.read_indices([5])["tokens"][0], batch["tokens"][0])


def test_source_pickles_without_open_handles(store):
    src = data.StoreSource(store, ("tokens",))
    _ = src.read_indices([0])  # opens the reader
    clone = pickle.loads(pickle.dumps(src))
    assert clone._reader is None
    np.testing.assert_array_equal(
        clone.read_indices([7])["tokens"], src.read_indices([7])["tokens"]
    )


def _take(it, n):
    return [next(it)["tokens"] for _ in range(n)]


def test_seeded_and_resumable(store):
    src = data.StoreSource(store, ("tokens",))
    a = _take(data.make_iterator(src, 8, seed=1), 9)  # > one epoch (48 rows / 8)
    b = _take(data.make_iterator(src, 8, seed=1), 9)
    c = _take(data.make_iterator(src, 8, seed=2), 9)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # One epoch covers every row exactly once.
    epoch = np.concatenate(a[:6])
    assert len({r.tobytes() for r in epoch}) == len(
        {r.tobytes() for r in src.read_indices(range(48))["tokens"]}
    )
    it = data.make_iterator(src, 8, seed=1)
    _take(it, 4)
    state = it.get_state()
    resumed = data.make_iterator(src, 8, seed=1)
    resumed.set_state(state)
    rest = _take(resumed, 5)
    assert all(np.array_equal(x, y) for x, y in zip(rest, a[4:]))


def test_host_shards_are_disjoint(store):
    src = data.StoreSource(store, ("tokens",))
    rows = []
    for host in range(2):
        ds = data.make_dataset(src, 4, seed=0, process_index=host, process_count=2)
        rows.append(np.concatenate([ds[i]["tokens"] for i in range(6)]))  # one epoch
    keys = [{r.tobytes() for r in x} for x in rows]
    assert not keys[0] & keys[1]


def test_batch_larger_than_store_is_an_error(store):
    src = data.StoreSource(store, ("tokens",))
    with pytest.raises(ConfigError, match="committed rows"):
        data.make_iterator(src, 64, seed=0)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(store):
    src = data.StoreSource(store, ("tokens", "topk"))
    threads = _take(data.make_iterator(src, 8, seed=3), 6)
    procs = data.make_iterator(src, 8, seed=3, num_workers=2)
    got = _take(procs, 3)
    resumed = data.make_iterator(src, 8, seed=3, num_workers=2)
    resumed.set_state(procs.get_state())
    got += _take(resumed, 3)
    assert all(np.array_equal(x, y) for x, y in zip(threads, got))


def test_loader_style_hidden_gives_the_same_hidden_loss(store):
    """The loader ships x/rms(x) in float16 instead of decoding x: the normalized
    MSE must not notice (it normalises the target per token itself)."""
    from store import StoreReader
    from trainer.training import losses

    reader = StoreReader(str(store))
    field = f"hidden/{tl.LAYER}"
    decoded = reader.read(np.arange(4), fields=(field,))[field]  # float32 x
    loaded = data.StoreSource(store, ("tokens", field)).read_indices(range(4))[field]  # stored name
    pred = np.random.default_rng(0).normal(size=decoded.shape).astype(np.float32)
    want = np.asarray(losses.normalized_mse(pred, decoded))
    got = np.asarray(losses.normalized_mse(pred, loaded.astype(np.float32)))
    np.testing.assert_allclose(got, want, rtol=1e-3)
