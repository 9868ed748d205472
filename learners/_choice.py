"""Small helpers shared by the learners' choice rules."""

from __future__ import annotations

import numpy as np

from learners._kernels import gaussian_argmax


def argmax_ties(scores: np.ndarray, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """Index of a maximum (ties broken by ``rng``) and the propensities of that rule."""
    i = int(np.argmax(scores))
    props = np.zeros(len(scores))
    ties = scores == scores[i]
    n_ties = int(np.count_nonzero(ties))
    if n_ties == 1:
        props[i] = 1.0
        return i, props
    best = np.flatnonzero(ties)
    props[best] = 1.0 / n_ties
    return int(rng.choice(best)), props


def argmax_ties_list(scores: list[float], rng: np.random.Generator) -> tuple[int, list[float]]:
    """:func:`argmax_ties` on a list (cheaper for a handful of arms), same ``rng`` use."""
    top = max(scores)
    i = scores.index(top)
    n = len(scores)
    props = [0.0] * n
    n_ties = scores.count(top)
    if n_ties == 1:
        props[i] = 1.0
        return i, props
    best = [j for j in range(n) if scores[j] == top]
    for j in best:
        props[j] = 1.0 / n_ties
    # the draw ``rng.choice(best)`` makes (the same index from the same stream), without
    # building an array: a sixth of the time
    return best[int(rng.integers(0, n_ties))], props


def uniform_over(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """A uniformly random index where ``mask`` holds, and the uniform propensities."""
    cand = np.flatnonzero(mask)
    props = np.zeros(len(mask))
    props[cand] = 1.0 / len(cand)
    return int(rng.choice(cand)), props


_NODES = np.linspace(-7.0, 7.0, 201)
_WEIGHTS = np.exp(-0.5 * _NODES**2) / np.sqrt(2.0 * np.pi) * (_NODES[1] - _NODES[0])


def gaussian_argmax_probs(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """P(arm k has the largest draw) for independent ``N(mean_k, sd_k^2)``.

    ``P_k = E_z[prod_{j != k} Phi((mean_k + sd_k z - mean_j) / sd_j)]``, by the
    trapezoid rule on 201 points of [-7, 7] (within ~1e-3 of Monte Carlo even
    for very unequal widths, where Gauss-Hermite is not); ``sd == 0`` is
    floored. The result is normalised to sum to 1.
    """
    sd = np.maximum(np.asarray(sd, dtype=np.float64), 1e-12)
    k = len(mean)
    probs = np.empty(k)
    gaussian_argmax(np.ascontiguousarray(mean, dtype=np.float64), sd, _NODES, _WEIGHTS, probs)
    probs = np.clip(probs, 0.0, None)
    total = probs.sum()
    return probs / total if total > 0 else np.full(k, 1.0 / k)
