"""Compiled inner loops of the linear learners (numba, cached on disk).

:func:`score_arms` and :func:`rank_one` work on the stacked per-arm buffer ``M`` of
:class:`learners.linear.RidgeArms`: ``M[k]`` holds ``A_k^{-1}`` (rows ``:d``),
one ``theta`` per reward component (rows ``d:d+C``) and their combination by
the objective's weights (row ``d+C``). A decision touches every arm's
``A^{-1}`` once; an update touches one arm's block once. NumPy would spend most
of either in per-call overhead at these sizes (d = 64, a dozen arms), which is
what these loops avoid. :func:`gaussian_argmax` is LinTS's propensity
quadrature; :func:`hash_words` the featurizer's hashed words and bigrams
(:mod:`learners.featurize`). The signatures are explicit, so every kernel compiles (or loads
from numba's cache) when this module is imported, never on a request, and
takes C-contiguous arrays only. ``tests/learners/test_kernels.py``
checks them against the plain NumPy algebra. They keep the GIL (no ``nogil``): a
call of a few microseconds on a gateway's request path that let it go would hand
it to one of the replica's other threads (Serve's router loop, Ray's) and wait up
to the interpreter's switch interval (5 ms) to take it back.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types


@njit(
    "void(float64[:, :, ::1], float64[::1], float64, float64[:, ::1])",
    cache=True,
)
def score_arms(M: np.ndarray, z: np.ndarray, alpha: float, out: np.ndarray) -> None:
    """Per arm ``k``: ``out[0, k] = theta_w[k] . z`` (the mean), ``out[1, k] =
    sqrt(z^T A_k^{-1} z)`` (the width, rounding below 0 clipped) and ``out[2, k] =
    out[0, k] + alpha out[1, k]`` (the UCB score)."""
    K, e, d = M.shape
    t = np.empty(d)
    for k in range(K):
        # t = A_k^-1 z as a sum of rows (A^-1 is symmetric): the inner loop has no
        # reduction, so it vectorises without reassociating sums
        for j in range(d):
            t[j] = 0.0
        for i in range(d):
            zi = z[i]
            for j in range(d):
                t[j] += M[k, i, j] * zi
        q = 0.0
        m = 0.0
        for j in range(d):
            q += t[j] * z[j]
            m += M[k, e - 1, j] * z[j]
        width = np.sqrt(q) if q > 0.0 else 0.0
        out[0, k] = m
        out[1, k] = width
        out[2, k] = m + alpha * width


@njit(
    "void(float64[:, ::1], float64[::1], float64[::1], float64[::1], float64)",
    cache=True,
)
def rank_one(Mk: np.ndarray, x: np.ndarray, r: np.ndarray, w: np.ndarray, sign: float) -> None:
    """Sherman-Morrison on one arm's block, in place (see ``RidgeArms._rank_one``).

    With ``v = Mk x`` (``A^-1 x``, every component's prediction, their
    combination), ``u = (-A^-1 x, r - predictions, w . (r - predictions))`` and
    ``f = sign / (1 + sign x . A^-1 x)``: ``Mk += f u (A^-1 x)^T``.
    """
    e, d = Mk.shape
    C = e - d - 1
    v = np.empty(e)
    for i in range(e):
        s = 0.0
        for j in range(d):
            s += Mk[i, j] * x[j]
        v[i] = s
    xAx = 0.0
    for j in range(d):
        xAx += x[j] * v[j]
    f = sign / (1.0 + sign * xAx)
    u = np.empty(e)
    for i in range(d):
        u[i] = -v[i]
    comb = 0.0
    for c in range(C):
        err = r[c] - v[d + c]
        u[d + c] = err
        comb += w[c] * err
    u[e - 1] = comb
    for i in range(e):
        fu = f * u[i]
        for j in range(d):
            Mk[i, j] += fu * v[j]


@njit(
    "void(float64[::1], float64[::1], float64[::1], float64[::1], float64[::1])",
    cache=True,
)
def gaussian_argmax(
    mean: np.ndarray, sd: np.ndarray, nodes: np.ndarray, weights: np.ndarray, out: np.ndarray
) -> None:
    """``out[k] = sum_n weights[n] prod_{j != k} Phi((mean_k + sd_k nodes[n] - mean_j) / sd_j)``.

    The quadrature of ``P(draw k is the largest)`` for independent normals
    (see :func:`learners._choice.gaussian_argmax_probs`); a product is cut short
    once it falls below 1e-300 (its term is 0 to double precision).
    """
    K = len(mean)
    inv_sqrt2 = 1.0 / np.sqrt(2.0)
    for k in range(K):
        total = 0.0
        for n in range(len(nodes)):
            v = mean[k] + sd[k] * nodes[n]
            p = weights[n]
            for j in range(K):
                if j != k:
                    p *= 0.5 * math.erfc(-(v - mean[j]) / sd[j] * inv_sqrt2)
                    if p < 1e-300:
                        p = 0.0
                        break
            total += p
        out[k] = total


def _crc_table() -> np.ndarray:
    """CRC-32's byte table (the reflected polynomial 0xEDB88320, as zlib's ``crc32``)."""
    table = np.empty(256, dtype=np.int64)
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[b] = c
    return table


CRC_TABLE = _crc_table()


# the bytes of a ``str``'s encoding, read in place (np.frombuffer over bytes: read-only)
_BYTES = types.Array(types.uint8, 1, "C", readonly=True)


@njit(
    types.int64(
        _BYTES, types.int64[::1], types.int64, types.int64, types.boolean, types.int64,
        types.float64, types.float64[::1],
    ),
    cache=True,
)  # fmt: skip
def hash_words(
    data: np.ndarray,
    table: np.ndarray,
    seed: int,
    n: int,
    bigrams: bool,
    cap: int,
    scale: float,
    out: np.ndarray,
) -> int:
    """The featurizer's text block from ``data``, the UTF-8 bytes of lowered text: its
    words (runs of ``[a-z0-9_]``: every byte of a character outside ASCII is 0x80 or
    above, so a run of these bytes is a run of these characters), the last ``cap`` of
    them (all if ``cap`` < 0) and, with ``bigrams``, each two in a row joined by a
    space, each hashed by ``zlib.crc32(token, seed)`` (``table``: :data:`CRC_TABLE`;
    ``seed`` in [0, 2**32)) to position ``(h >> 1) % n`` with sign ``+1`` if ``h & 1``
    else ``-1``. Where the signed counts are not all 0, ``out[j] = counts[j] * (scale /
    sqrt(sum of counts squared))``; else ``out`` is left as it is. Returns the number of
    words in ``data``."""
    size = len(data)
    starts = np.empty(size // 2 + 1, dtype=np.int64)
    ends = np.empty(size // 2 + 1, dtype=np.int64)
    words = 0
    i = 0
    while i < size:
        c = data[i]
        if (97 <= c <= 122) or (48 <= c <= 57) or c == 95:
            starts[words] = i
            i += 1
            while i < size:
                c = data[i]
                if not ((97 <= c <= 122) or (48 <= c <= 57) or c == 95):
                    break
                i += 1
            ends[words] = i
            words += 1
        else:
            i += 1
    first = 0 if cap < 0 or words <= cap else words - cap
    counts = np.zeros(n, dtype=np.int64)
    mask = 0xFFFFFFFF
    joined = 0  # CRC state after the previous word and a space
    for w in range(first, words):
        crc = seed ^ mask
        for j in range(starts[w], ends[w]):
            crc = table[(crc ^ data[j]) & 0xFF] ^ (crc >> 8)
        h = crc ^ mask
        counts[(h >> 1) % n] += 1 if h & 1 else -1
        if bigrams:
            if w > first:
                pair = joined
                for j in range(starts[w], ends[w]):
                    pair = table[(pair ^ data[j]) & 0xFF] ^ (pair >> 8)
                h = pair ^ mask
                counts[(h >> 1) % n] += 1 if h & 1 else -1
            joined = table[(crc ^ 32) & 0xFF] ^ (crc >> 8)
    squares = 0
    for j in range(n):
        squares += counts[j] * counts[j]
    if squares > 0:
        factor = scale / math.sqrt(squares)
        for j in range(n):
            out[j] = counts[j] * factor
    return words
