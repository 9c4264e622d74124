"""A store is readable by plain zarr-python (no store package on the read path)."""
import warnings

import numpy as np
import pytest
import zarr

from store import StoreReader


@pytest.mark.parametrize("profile", ["exact", "compact"])
def test_zarr_python_reads_and_decodes(filled_store, profile):
    url, schema, data = filled_store(profile, num_rows=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "not recognized as a component of a Zarr hierarchy"
        g = zarr.open_group(url.removeprefix("file://"), mode="r")
        members = dict(g.members(max_depth=None))
    manifest = dict(g.attrs)
    assert manifest["schema"]["profile"] == profile and manifest["encodings"]["profile"] == profile
    assert "tokens" in members and "topk/ids" in members and "hidden/2" in members
    tokens = g["tokens"][:]
    assert (tokens[4:8] == data[1]["tokens"]).all()
    ids = g["topk/ids"][:].astype(np.int32)
    assert g["topk/ids"].dtype == np.uint16 and (ids[:4] == data[0]["topk_ids"]).all()
    # Decode with numpy only, following the manifest's encoding notes.
    rms = g["hidden_aux/2/rms"][:]
    if profile == "exact":
        lp = g["topk/logprobs"][:].astype(np.float32)
        h = g["hidden/2"][:].astype(np.float32) * rms[..., None]
    else:
        code = g["topk/logprobs"][:]
        lp = g["topk/top_logprob"][:][..., None] - 32.0 * (code.astype(np.float32) / 254) ** 2
        lp[code == 255] = -np.inf
        y = g["hidden/2"][:].astype(np.float32) * g["hidden_aux/2/qstep"][:].astype(np.float32)[..., None]
        np.put_along_axis(y, g["hidden_aux/2/outlier_idx"][:].astype(np.intp),
                          g["hidden_aux/2/outlier_val"][:].astype(np.float32), axis=-1)
        h = y * rms[..., None]
    ours = StoreReader(url).read(np.arange(8))
    np.testing.assert_allclose(lp, ours["topk_logprobs"], rtol=1e-6)
    np.testing.assert_allclose(h, ours["hidden/2"], rtol=1e-6, atol=1e-6)


def test_store_never_imports_jax_or_beam():
    import subprocess
    import sys
    code = ("import sys, store, store.cli, store.verify, store.stats, store.inspection; "
            "bad = [m for m in ('jax', 'flax', 'apache_beam') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
