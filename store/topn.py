"""Top-n channel selection of the compact encoder's outliers: the n largest, ties to the lower channel."""

import numpy as np

_BLOCK = 64  # channels per block of the top-n pre-selection


def _stable_top_n(a_MxD: np.ndarray, n: int) -> np.ndarray:
    """The rule itself (lax.top_k's, what the device encoder does), ascending channels of finite values.

    Everything above the n-th largest value v, then the lowest channels equal
    to v until there are n: ``np.argsort(-a, kind="stable")[:, :n]``'s set in
    a few O(D) passes (a stable sort of the 1-10% tie rows of a bf16 teacher
    cost as much as the whole fast path).
    """
    D = a_MxD.shape[-1]
    v = np.partition(a_MxD, D - n, axis=-1)[:, D - n, None]
    above = a_MxD > v
    tied = a_MxD == v
    room = n - above.sum(
        axis=-1, keepdims=True
    )  # >= 1: fewer than n values exceed the n-th largest
    take = above | (tied & (np.cumsum(tied, axis=-1) <= room))
    return np.nonzero(take)[1].reshape(-1, n)


def _fix_ties(a_MxD: np.ndarray, idx_Mxn: np.ndarray, more_Mx: np.ndarray, n: int) -> None:
    """Re-selects, by the stable rule, the rows in ``more_Mx`` (argpartition's choice may not be the rule's)."""
    redo = np.nonzero(more_Mx)[0]
    if redo.size:
        idx_Mxn[redo] = _stable_top_n(a_MxD[redo], n)


def top_n_channels(a_xD: np.ndarray, n: int) -> np.ndarray:
    """Ascending indices of the ``n`` largest values along the last axis (intp), ties to the lower channel.

    Where the top-n set is unique (the n-th largest value is above the
    (n+1)-th) any selection finds it; argpartition does, run on a fifth of
    the data at D = 2560: the n largest block maxima (blocks of 64 channels)
    are n distinct values >= their minimum ``thr``, so the n-th largest value
    is >= thr and lies, with all of the top n, in those n blocks; only they
    are gathered and partitioned. A token whose top-n set is not unique (its
    n-th and (n+1)-th largest values tie, e.g. an all-zero token), or with
    another block whose max ties ``thr``, is re-selected on its full row:
    among equal values the lower channels are taken, as
    ``lax.top_k`` does, so the device encoder (teacher_dump/encode_ops.py)
    writes the same bytes. Only those rows pay for the sort.
    """
    D = a_xD.shape[-1]
    lead = a_xD.shape[:-1]
    a = a_xD.reshape(-1, D)
    M = a.shape[0]
    nb = D // _BLOCK
    if n == 0 or M == 0:
        idx = np.empty((M, n), np.intp)
    elif D % _BLOCK or nb < 2 * n:
        idx = np.argpartition(a, D - n, axis=-1)[:, D - n :]
        nth = np.take_along_axis(a, idx, axis=-1).min(axis=-1)
        _fix_ties(a, idx, (a >= nth[:, None]).sum(axis=-1) > n, n)
    else:
        block_max = np.maximum.reduceat(a, np.arange(0, D, _BLOCK), axis=-1)  # [M, nb]
        blocks = np.argpartition(block_max, nb - n, axis=-1)[:, nb - n :]  # [M, n]
        thr = np.take_along_axis(block_max, blocks, axis=-1).min(axis=-1)
        # Whole blocks of 64 channels, copied as contiguous slices: [M, n * 64].
        sub = a.reshape(M, nb, _BLOCK)[np.arange(M)[:, None], blocks].reshape(M, n * _BLOCK)
        L = n * _BLOCK
        top = np.argpartition(sub, L - n, axis=-1)[:, L - n :]
        nth = np.take_along_axis(sub, top, axis=-1).min(axis=-1)
        idx = np.take_along_axis(blocks, top // _BLOCK, axis=-1) * _BLOCK + top % _BLOCK
        # The top-n set is not unique (more than n values >= the n-th largest),
        # or a block not gathered may hold a value >= thr: the full row decides.
        _fix_ties(
            a,
            idx,
            ((sub >= nth[:, None]).sum(axis=-1) > n)
            | ((block_max >= thr[:, None]).sum(axis=-1) > n),
            n,
        )
    idx.sort(axis=-1)
    return idx.reshape(*lead, n)
