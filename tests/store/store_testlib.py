"""Synthetic teacher signal for the store tests (a module, not conftest: several
test folders have a conftest.py, so `from conftest import ...` is ambiguous)."""
import numpy as np


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def synth_unit(rng, rows, schema, top_p_drop=True):
    """One unit of inputs for write_unit: tokens, sorted top-k of a real log-softmax, outlier-heavy hidden."""
    T, K, V, D = schema.seq_len, schema.k, schema.vocab_size, schema.hidden_dim
    tokens = rng.integers(0, V, (rows, T), dtype=np.int32)
    out = {"tokens": tokens, "topk_ids": None, "topk_logprobs": None, "hidden": {}}
    if K:
        lp = _log_softmax(rng.normal(size=(rows, T, V)) * 2.5).astype(np.float32)
        ids = np.argsort(-lp, axis=-1, kind="stable")[..., :K]
        topk = np.take_along_axis(lp, ids, -1)
        if top_p_drop:  # Slots a top-p truncation dropped: -inf, id 0.
            topk[:, 0, K // 2:] = -np.inf
            ids[:, 0, K // 2:] = 0
        out["topk_ids"], out["topk_logprobs"] = ids.astype(np.int32), topk
    for layer in schema.hidden_layers:
        h = rng.standard_t(5, size=(rows, T, D)).astype(np.float32) * 30.0
        h[..., 1] *= 40.0  # A massive-activation channel, as in real residual streams.
        out["hidden"][layer] = h
    return out


def load_bench(name):
    """Imports bench/<name>.py (bench/ is not a package)."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent.parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
