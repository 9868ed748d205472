"""Observed demand per context cluster, with exponential forgetting.

Contexts are assigned to the nearest of ``n_clusters`` centroids. The centroids are
seeded by k-means++ plus a few Lloyd steps on the first ``n_clusters * warmup``
contexts, then follow the stream (mini-batch k-means). Counts decay with a
half-life on the controller's clock, so demand follows drifting popularity.

A request that pins its adapter (a client of one fine-tune asks for it by name) is
not routed by context: it is direct demand for that adapter, counted per adapter
(:meth:`DemandTracker.observe_pinned`) with the same forgetting, not in the
clusters. The shares of both kinds add up to one: :meth:`DemandTracker.share` per
cluster, :meth:`DemandTracker.pinned_share` per adapter.
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
        self._free = 0.0  # decayed count of the contexts observed (routed requests)
        self._pinned = np.zeros(0)  # adapter index -> decayed count of pinned requests
        self._last: float | None = None
        self._share: np.ndarray | None = None  # cached; decay scales all weights alike
        self._pinned_share: np.ndarray | None = None

    def _decay_to(self, now: float) -> None:
        if self._last is not None and now > self._last:
            keep = 0.5 ** ((now - self._last) / self.half_life_s)
            self._weight *= keep
            self._pinned *= keep
            self._free *= keep
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
        if len(X) == 0 or X.shape[1] == 0:
            return
        self._free += len(X)
        self._share = self._pinned_share = None
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

    def observe_pinned(self, adapters: np.ndarray, now: float) -> None:
        """Requests that named their adapter (indices into the controller's arms)."""
        adapters = np.asarray(adapters, dtype=np.int64).ravel()
        self._decay_to(now)
        if len(adapters) == 0:
            return
        counts = np.bincount(adapters, minlength=len(self._pinned)).astype(float)
        counts[: len(self._pinned)] += self._pinned
        self._pinned = counts
        self._share = self._pinned_share = None

    def _total(self) -> float:
        return self._free + float(self._pinned.sum())

    def share(self) -> np.ndarray:
        """Share of recent demand per cluster, of all demand, pinned included (read-only;
        the same array until the next ``observe``)."""
        if self._share is None:
            total = self._total()
            free = self._free / total if total > 0 else 1.0  # routed share of all demand
            if self.centroids is None:
                n = len(self._buffer)
                self._share = np.full(n, free / n) if n else np.zeros(0)
            else:
                w = self._weight.sum()
                self._share = free * (
                    self._weight / w if w > 0 else np.full(self.n_clusters, 1 / self.n_clusters)
                )
        return self._share

    def pinned_share(self, n_arms: int) -> np.ndarray:
        """Share of recent demand per adapter that pinned it, of all demand (read-only;
        the same array until the next ``observe``)."""
        if self._pinned_share is None or len(self._pinned_share) != n_arms:
            total = self._total()
            out = np.zeros(n_arms)
            k = min(n_arms, len(self._pinned))
            if total > 0:
                out[:k] = self._pinned[:k] / total
            self._pinned_share = out
        return self._pinned_share

    def demand(self) -> tuple[np.ndarray, np.ndarray]:
        """(centroids, share of recent demand); before seeding, the raw contexts."""
        if self.centroids is None:
            if not self._buffer:
                return np.zeros((0, self.dim)), np.zeros(0)
            return np.array(self._buffer), self.share()
        return self.centroids.copy(), self.share()
