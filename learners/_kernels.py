"""Compiled inner loops of the linear learners (numba, cached on disk).

:func:`score_arms` and :func:`rank_one` work on the stacked per-arm buffer ``M`` of
:class:`learners.linear.RidgeArms`: ``M[k]`` holds ``A_k^{-1}`` (rows ``:d``),
one ``theta`` per reward component (rows ``d:d+C``) and their combination by
the objective's weights (row ``d+C``). A decision touches every arm's
``A^{-1}`` once; an update touches one arm's block once. NumPy would spend most
of either in per-call overhead at these sizes (d = 64, a dozen arms), which is
what these loops avoid. :func:`gaussian_argmax` is LinTS's propensity
quadrature. The signatures are explicit, so every kernel compiles (or loads
from numba's cache) when this module is imported, never on a request, and
takes C-contiguous float64 arrays only. ``tests/learners/test_kernels.py``
checks them against the plain NumPy algebra. They keep the GIL (no ``nogil``): a
call of a few microseconds on a gateway's request path that let it go would hand
it to one of the replica's other threads (Serve's router loop, Ray's) and wait up
to the interpreter's switch interval (5 ms) to take it back.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


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
