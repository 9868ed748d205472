"""Observed demand per context cluster, with exponential forgetting.

Contexts are assigned to the nearest of ``n_clusters`` centroids. The centroids are
seeded by k-means++ plus a few Lloyd steps on the first ``n_clusters * warmup``
contexts, then follow the stream (mini-batch k-means). Counts decay with a
half-life on the controller's clock, so demand follows drifting popularity.
"""

from __future__ import annotations

import numpy as np


class DemandTracker:
    def __init__(
        self,
        n_clusters: int,
        dim: int,
        half_life_s: float,
        rng: np.random.Generator,
        warmup: int = 20,
    ) -> None:
        if n_clusters < 1 or half_life_s <= 0:
            raise ValueError("need n_clusters >= 1 and half_life_s > 0")
        self.n_clusters, self.dim, self.half_life_s = n_clusters, dim, half_life_s
        self._rng = rng
        self._warmup = n_clusters * warmup
        self._buffer: list[np.ndarray] = []
        self.centroids: np.ndarray | None = None
        self._seen = np.zeros(n_clusters)
        self._weight = np.zeros(n_clusters)
        self._last: float | None = None
        self._share: np.ndarray | None = None  # cached; decay scales all weights alike

    def _decay_to(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._weight *= 0.5 ** ((now - self._last) / self.half_life_s)
        self._last = now if self._last is None else max(self._last, now)

    def assign(self, X: np.ndarray) -> np.ndarray:
        assert self.centroids is not None
        d2 = ((X[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=-1)
        return np.asarray(d2.argmin(axis=1))

    def _seed(self, X: np.ndarray) -> None:
        k = self.n_clusters
        centers = [X[self._rng.integers(len(X))]]
        for _ in range(1, k):
            d2 = ((X[:, None, :] - np.array(centers)[None]) ** 2).sum(-1).min(1)
            p = d2 / d2.sum() if d2.sum() > 0 else None
            centers.append(X[self._rng.choice(len(X), p=p)])
        self.centroids = np.array(centers, dtype=float)
        for _ in range(10):
            labels = self.assign(X)
            for c in range(k):
                if np.any(labels == c):
                    self.centroids[c] = X[labels == c].mean(axis=0)
        labels = self.assign(X)
        self._seen = np.bincount(labels, minlength=k).astype(float)
        self._weight = self._seen.copy()
        self._share = None

    def observe(self, X: np.ndarray, now: float) -> None:
        X = np.atleast_2d(np.asarray(X, dtype=float))
        self._decay_to(now)
        if self.centroids is None:
            self._buffer.extend(X)
            if len(self._buffer) >= self._warmup:
                self._seed(np.array(self._buffer))
                self._buffer.clear()
            return
        labels = self.assign(X)
        counts = np.bincount(labels, minlength=self.n_clusters).astype(float)
        sums = np.zeros_like(self.centroids)
        np.add.at(sums, labels, X)
        self._seen += counts
        hit = counts > 0
        self.centroids[hit] += (sums[hit] - counts[hit, None] * self.centroids[hit]) / self._seen[
            hit, None
        ]
        self._weight += counts
        self._share = None

    def share(self) -> np.ndarray:
        """Share of recent demand per cluster (read-only; the same array until ``observe``)."""
        if self.centroids is None:
            n = len(self._buffer)
            return np.full(n, 1.0 / n) if n else np.zeros(0)
        if self._share is None:
            total = self._weight.sum()
            self._share = (
                self._weight / total if total > 0 else np.full(self.n_clusters, 1 / self.n_clusters)
            )
        return self._share

    def demand(self) -> tuple[np.ndarray, np.ndarray]:
        """(centroids, share of recent demand); before seeding, the raw contexts."""
        if self.centroids is None:
            if not self._buffer:
                return np.zeros((0, self.dim)), np.zeros(0)
            return np.array(self._buffer), self.share()
        return self.centroids.copy(), self.share()
