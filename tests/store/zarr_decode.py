"""Reference decoder of a store from zarr-python + numpy ONLY, following the manifest's rules.

Never imports the ``store`` package: this is what an outside reader can do
with the manifest's ``encodings`` and nothing else, so tests compare the
package's reads against it.
"""

import warnings

import numpy as np
import zarr


def open_group(url):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "not recognized as a component of a Zarr hierarchy"
        g = zarr.open_group(str(url).removeprefix("file://"), mode="r")
        dict(g.members(max_depth=None))
    return g


def unpack_ids(a, n, bits):
    """The manifest's packed_ids rule."""
    b = np.unpackbits(a, axis=-1, bitorder="little")[..., : n * bits].reshape(
        *a.shape[:-1], n, bits
    )
    return (b.astype(np.int64) << np.arange(bits)).sum(-1)


def ids(g, name, n):
    """int64 ids of ``topk/ids`` or ``sampled/ids`` (packed iff the manifest has ids_bits)."""
    enc = g.attrs["encodings"]
    a = g[name][:]
    return unpack_ids(a, n, enc["ids_bits"]) if "ids_bits" in enc else a.astype(np.int64)


def topk(g):
    """(ids int64, logprobs float32) [N, T, K]."""
    schema = g.attrs["schema"]
    K = schema["k"]
    if schema["profile"] == "exact":
        lp = g["topk/logprobs"][:].astype(np.float32)
    else:  # compact and lean, as the manifest says: "logprob = top_logprob - 32.0 * (c/254)**2; c = 255 means -inf"
        code = g["topk/logprobs"][:]
        frac = code.astype(np.float32) * np.float32(1 / 254)
        lp = g["topk/top_logprob"][:][..., None] - np.float32(32.0) * frac * frac
        lp[code == 255] = -np.inf
    return ids(g, "topk/ids", K), lp


def sampled(g):
    """(ids int64, counts uint8, logprobs float32) [N, T, S]."""
    S = g.attrs["schema"]["samples"]
    return (
        ids(g, "sampled/ids", S),
        g["sampled/counts"][:],
        g["sampled/logprobs"][:].astype(np.float32),
    )


def hidden(g, layer):
    """float32 activations x [N, T, D] of a layer."""
    schema = g.attrs["schema"]
    rms = g[f"hidden_aux/{layer}/rms"][:]
    if schema["profile"] == "exact":
        return np.multiply(g[f"hidden/{layer}"][:], rms[..., None], dtype=np.float32)
    if schema["profile"] == "compact":
        step = g[f"hidden_aux/{layer}/qstep"][:].astype(np.float32)
        x = np.multiply(g[f"hidden/{layer}"][:], (step * rms)[..., None], dtype=np.float32)
        np.put_along_axis(
            x,
            g[f"hidden_aux/{layer}/outlier_idx"][:].astype(np.intp),
            g[f"hidden_aux/{layer}/outlier_val"][:].astype(np.float32) * rms[..., None],
            axis=-1,
        )
        return x
    if schema["profile"] == "lean":
        return lean_normalized(g, layer) * rms[..., None]
    raise ValueError(f"no reference decode for profile {schema['profile']!r}")


def sylvester(b):
    """H_b: H_1 = [1], H_2n = [[H, H], [H, -H]]."""
    H = np.ones((1, 1))
    while H.shape[0] < b:
        H = np.block([[H, H], [H, -H]])
    return H


def lean_normalized(g, layer):
    """float64 y = x / rms of a lean layer, by the manifest's hidden_rotation rule."""
    enc = g.attrs["encodings"]
    s = np.asarray(enc["hidden_signs"], np.float64)
    D, b = s.size, enc["hidden_group"]
    codes = g[f"hidden/{layer}"][:].astype(np.int64)
    c = (codes[..., None] // 6 ** np.arange(3)) % 6
    c = c.reshape(*codes.shape[:-1], -1)[..., :D]
    step = g[f"hidden_aux/{layer}/step"][:].astype(np.float64)
    r = (c - 2.5) * np.repeat(step, b, axis=-1)
    y = r.reshape(*r.shape[:-1], D // b, b) @ sylvester(b) / np.sqrt(b)
    return y.reshape(*r.shape) * s


def loss_mask(g):
    """uint8 [N, T] loss mask: the stored array, or all ones where the manifest has none (its rule)."""
    if "loss_mask" in g.attrs["encodings"]:
        return g["loss_mask"][:]
    return np.ones(g["tokens"].shape, np.uint8)


def token_logprob(g):
    """float32 [N, T] teacher log-prob of each realized next token (the stored array itself)."""
    return g["token_logprob"][:]
