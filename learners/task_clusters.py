"""Online task inference: clusters of prompt embeddings learned from traffic.

When clients send no task label, the task one-hot of the featurizer's vector
can carry a cluster id instead. :class:`OnlineTaskClusters` is a sequential
(leader-follower) k-means on unit vectors: a prompt joins the nearest cluster
when its cosine similarity to that centroid is at least ``1 - threshold`` (or
when all ``k`` clusters are open), else it opens a new one; the joined centroid
moves to the running mean of its members. It sees each prompt once, in arrival
order, keeps ``k x e`` floats, and is deterministic given that order.
"""

from __future__ import annotations

import numpy as np

# default cosine-distance threshold per embedding, chosen by cluster purity on the
# *_train files of routerbench_zs (3 seeds): the static embeddings of the MiniLM token
# table all lie close together, so they need a much smaller one
DEFAULT_THRESHOLD: dict[str, float] = {"hashed": 0.5, "minilm": 0.5, "minilm-static": 0.05}


class OnlineTaskClusters:
    def __init__(self, k: int, threshold: float = 0.5):
        if k < 1:
            raise ValueError("k must be at least 1")
        if not 0.0 < threshold <= 2.0:
            raise ValueError("threshold is a cosine distance in (0, 2]")
        self.k, self.threshold = k, threshold
        self.sums: np.ndarray | None = None  # (open clusters, e): sum of members
        self.centroids: np.ndarray | None = None  # unit vectors
        self.counts = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.counts)

    def assign(self, e: np.ndarray) -> int:
        """The cluster of embedding ``e`` (learning from it); in ``range(k)``."""
        v = np.asarray(e, dtype=np.float64)
        norm = float(np.sqrt(v @ v))
        if norm == 0.0:
            return 0
        v = v / norm
        if self.centroids is None or self.sums is None:
            self.sums, self.centroids = v[None].copy(), v[None].copy()
            self.counts = np.ones(1, dtype=np.int64)
            return 0
        sims = self.centroids @ v
        j = int(np.argmax(sims))
        if sims[j] < 1.0 - self.threshold and len(self.counts) < self.k:
            self.sums = np.vstack([self.sums, v])
            self.centroids = np.vstack([self.centroids, v])
            self.counts = np.append(self.counts, 1)
            return len(self.counts) - 1
        self.sums[j] += v
        self.counts[j] += 1
        c = self.sums[j]
        self.centroids[j] = c / max(float(np.sqrt(c @ c)), 1e-12)
        return j
