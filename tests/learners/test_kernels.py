"""The compiled kernels against the plain NumPy algebra they replace."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners._kernels import CRC_TABLE, hash_words, rank_one, score_arms

D, C = 12, 4


def _block(rng: np.random.Generator, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random SPD ``A``, component vectors ``b`` and the stacked block [A^-1; theta_c; theta_w]."""
    G = rng.standard_normal((D, D))
    A = G @ G.T + D * np.eye(D)
    b = rng.standard_normal((C, D))
    A_inv = np.linalg.inv(A)
    theta = b @ A_inv
    return A, b, np.ascontiguousarray(np.vstack([A_inv, theta, w @ theta]))


@pytest.mark.parametrize("seed", range(5))
def test_score_arms_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(C)
    M = np.stack([_block(rng, w)[2] for _ in range(7)])
    z = rng.standard_normal(D)
    out = np.empty((3, len(M)))
    score_arms(M, z, 0.7, out)
    quad = np.einsum("i,kij,j->k", z, M[:, :D], z)
    mean = M[:, -1] @ z
    np.testing.assert_allclose(out[0], mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[1], np.sqrt(quad), rtol=1e-12)
    np.testing.assert_allclose(out[2], mean + 0.7 * np.sqrt(quad), rtol=1e-12)


def test_score_arms_clips_negative_rounding_to_zero_width() -> None:
    M = np.zeros((1, D + C + 1, D))
    M[0, 0, 0] = -1e-18  # what rounding can leave of a vanishing quadratic form
    out = np.empty((3, 1))
    z = np.zeros(D)
    z[0] = 1.0
    score_arms(M, z, 1.0, out)
    assert out[1, 0] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_rank_one_is_the_exact_ridge_update(seed: int) -> None:
    """Adding (x, r) gives inv(A + x x^T) and (b + r x^T) inv(A + x x^T); removing it restores."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(C)
    A, b, Mk = _block(rng, w)
    before = Mk.copy()
    x, r = rng.standard_normal(D), rng.standard_normal(C)
    rank_one(Mk, x, r, w, 1.0)
    A2 = A + np.outer(x, x)
    A2_inv = np.linalg.inv(A2)
    theta2 = (b + np.outer(r, x)) @ A2_inv
    np.testing.assert_allclose(Mk[:D], A2_inv, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Mk[D : D + C], theta2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(Mk[-1], w @ theta2, rtol=1e-9, atol=1e-12)
    rank_one(Mk, x, r, w, -1.0)
    np.testing.assert_allclose(Mk, before, rtol=1e-8, atol=1e-12)


def test_kernels_refuse_arrays_they_were_not_compiled_for() -> None:
    M = np.zeros((2, D + C + 1, D), dtype=np.float32)
    with pytest.raises(TypeError):
        score_arms(M, np.zeros(D, dtype=np.float32), 1.0, np.empty((3, 2)))


@pytest.mark.parametrize("seed", range(4))
def test_gaussian_argmax_matches_the_vectorised_quadrature(seed: int) -> None:
    from scipy.special import ndtr

    from learners._choice import _NODES, _WEIGHTS, gaussian_argmax_probs

    rng = np.random.default_rng(seed)
    k = 9
    mean, sd = rng.normal(0.5, 0.2, k), rng.uniform(0.001, 0.3, k)
    vals = mean[:, None] + sd[:, None] * _NODES[None, :]
    cdf = ndtr((vals[:, :, None] - mean[None, None, :]) / sd[None, None, :])
    cdf[np.arange(k), :, np.arange(k)] = 1.0
    want = np.prod(cdf, axis=2) @ _WEIGHTS
    got = gaussian_argmax_probs(mean, sd)
    np.testing.assert_allclose(got, want / want.sum(), atol=1e-12)
    assert got.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(20))
def test_argmax_ties_list_draws_as_the_array_rule(seed: int) -> None:
    """Ties broken as :func:`argmax_ties` breaks them (``rng.choice``): the same index and
    the same stream left behind, so decisions replay alike."""
    from learners._choice import argmax_ties, argmax_ties_list

    data = np.random.default_rng(seed)
    for _ in range(50):
        scores = data.integers(0, 3, size=int(data.integers(1, 12))).astype(float)
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        i_list, p_list = argmax_ties_list(scores.tolist(), a)
        i_arr, p_arr = argmax_ties(scores, b)
        assert i_list == i_arr
        np.testing.assert_array_equal(p_list, p_arr)
        assert a.random() == b.random()


# characters that lower() maps to ASCII letters (Kelvin sign, dotted capital I), digits
# outside ASCII, a lone surrogate (JSON can carry one), separators and word characters
TEXT_PIECES = [*"abcXYZ019_ -.,\n\t'é", "\u212a", "\u0130", "\u0663", "\u00b2", "\ud800",
               "\U0001f600", "word", "Word_2", "ÄÖÜß", "naïve"]  # fmt: skip


def _plain_block(text: str, seed: int, n: int, bigrams: bool, cap: int | None) -> np.ndarray:
    """The text block by its definition: ``[a-z0-9_]+`` words of the lowered text, the last
    ``cap``, their bigrams, each token's ``zlib.crc32`` signed into a position, scaled."""
    import math
    import zlib

    from learners.featurize import _WORD

    words = _WORD.findall(text.lower())
    if cap is not None:
        words = words[-cap:]
    tokens = words + (
        [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)] if bigrams else []
    )
    counts = [0] * n
    for tok in tokens:
        h = zlib.crc32(tok.encode(), seed)
        counts[(h >> 1) % n] += 1 if h & 1 else -1
    block = np.zeros(n)
    squares = sum(c * c for c in counts)
    if squares:
        block[:] = counts
        block *= 0.25 / math.sqrt(squares)
    return block


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(TEXT_PIECES), max_size=60).map("".join),
    st.sampled_from([0, 7, 2**31, 2**32 - 1, -5, 2**40 + 3]),
    st.sampled_from([8, 13, 64]),
    st.booleans(),
    st.sampled_from([None, 1, 3, 2048]),
)
def test_hash_words_is_the_text_block_to_the_bit(
    text: str, seed: int, n: int, bigrams: bool, cap: int | None
) -> None:
    from learners.featurize import _WORD, _utf8

    out = np.zeros(n)
    words = hash_words(
        _utf8(text), CRC_TABLE, seed & 0xFFFFFFFF, n, bigrams, -1 if cap is None else cap,
        0.25, out,
    )  # fmt: skip
    assert np.array_equal(out, _plain_block(text, seed, n, bigrams, cap))
    assert words == len(_WORD.findall(text.lower()))


def test_crc_table_is_zlibs() -> None:
    import zlib

    data = bytes(range(256)) * 3
    for seed in (0, 1, 0xDEADBEEF):
        crc = seed ^ 0xFFFFFFFF
        for b in data:
            crc = int(CRC_TABLE[(crc ^ b) & 0xFF]) ^ (crc >> 8)
        assert crc ^ 0xFFFFFFFF == zlib.crc32(data, seed)
