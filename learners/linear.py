"""Disjoint linear models per arm, vectorised over arms, one per reward component.

Each arm ``k`` keeps ``A_k = ridge I + sum x x^T`` and its inverse (kept by
Sherman-Morrison rank-one updates), and ``b_k[c] = sum r_c x`` for every reward
component ``c``. All components share ``A_k`` (they see the same contexts), so
the objective's weights ``w`` combine them at decision time:
``theta_k = A_k^{-1} (sum_c w_c b_k[c])``. New weights need no relearning.

Forgetting (for drifting arms): ``discount`` gamma < 1 shrinks each arm's data
part of ``A`` and ``b`` by gamma on every update of that arm (the ridge prior
stays); ``window`` keeps only each arm's last N events, removing the oldest
with a Sherman-Morrison downdate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from scipy.linalg.blas import dger

from learners.base import N_COMPONENTS, REWARD_COMPONENTS, Decision, RewardEvent
from learners.state import pack, unpack


def default_weights() -> np.ndarray:
    """Quality only: (1, 0, 0, 0)."""
    w = np.zeros(N_COMPONENTS)
    w[0] = 1.0
    return w


def as_weights(weights: Mapping[str, float] | Sequence[float] | np.ndarray | None) -> np.ndarray:
    """Weights as a vector ordered as ``REWARD_COMPONENTS`` (a mapping may omit components)."""
    if weights is None:
        return default_weights()
    if isinstance(weights, Mapping):
        unknown = set(weights) - set(REWARD_COMPONENTS)
        if unknown:
            raise ValueError(
                f"unknown reward components {sorted(unknown)}; use {REWARD_COMPONENTS}"
            )
        return np.array([float(weights.get(c, 0.0)) for c in REWARD_COMPONENTS])
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (N_COMPONENTS,):
        raise ValueError(f"weights need {N_COMPONENTS} entries, got {w.shape}")
    return w.copy()


class RidgeArms:
    """Per-arm ridge regression state, stacked along a leading arm axis."""

    def __init__(self, dim: int, ridge: float, discount: float = 1.0, window: int | None = None):
        self.dim, self.ridge, self.discount, self.window = dim, ridge, discount, window
        self.arms: list[str] = []
        self.index: dict[str, int] = {}
        self.A = np.zeros((0, dim, dim))
        self.A_inv = np.zeros((0, dim, dim))
        self.b = np.zeros((0, N_COMPONENTS, dim))
        self.pulls = np.zeros(0, dtype=np.int64)
        self.reward_sum = np.zeros((0, N_COMPONENTS))
        self.buffers: list[deque[tuple[np.ndarray, np.ndarray]]] = []

    def __len__(self) -> int:
        return len(self.arms)

    def add(self, arm: str) -> int:
        d = self.dim
        self.index[arm] = len(self.arms)
        self.arms.append(arm)
        eye = np.eye(d)[None]
        self.A = np.concatenate([self.A, self.ridge * eye])
        self.A_inv = np.concatenate([self.A_inv, eye / self.ridge])
        self.b = np.concatenate([self.b, np.zeros((1, N_COMPONENTS, d))])
        self.pulls = np.append(self.pulls, 0)
        self.reward_sum = np.concatenate([self.reward_sum, np.zeros((1, N_COMPONENTS))])
        self.buffers.append(deque())
        return self.index[arm]

    def remove(self, arm: str) -> None:
        k = self.index.pop(arm)
        self.arms.pop(k)
        keep = np.arange(len(self.pulls)) != k
        self.A, self.A_inv, self.b = self.A[keep], self.A_inv[keep], self.b[keep]
        self.pulls, self.reward_sum = self.pulls[keep], self.reward_sum[keep]
        self.buffers.pop(k)
        self.index = {a: i for i, a in enumerate(self.arms)}

    def update(self, k: int, x: np.ndarray, r: np.ndarray) -> None:
        self.pulls[k] += 1
        self.reward_sum[k] += r
        if self.discount < 1.0:
            g, eye = self.discount, self.ridge * np.eye(self.dim)
            A = eye + g * (self.A[k] - eye) + np.outer(x, x)
            self.A[k] = A
            self.A_inv[k] = np.linalg.inv(A)
            self.b[k] = g * self.b[k] + r[:, None] * x[None, :]
            return
        self._rank_one(k, x, r, 1.0)
        if self.window is not None:
            buf = self.buffers[k]
            buf.append((x.copy(), r.copy()))
            if len(buf) > self.window:
                old_x, old_r = buf.popleft()
                self._rank_one(k, old_x, old_r, -1.0)

    def _rank_one(self, k: int, x: np.ndarray, r: np.ndarray, sign: float) -> None:
        """Sherman-Morrison: add (sign +1) or remove (-1) one observation, in place.

        BLAS ``dger`` writes the rank-one updates into the stacked arrays
        (a C-ordered matrix's transpose is Fortran-ordered, and every update
        here is symmetric or transposed to match), avoiding temporaries.
        """
        Ainv = self.A_inv[k]
        Ax = Ainv @ x
        denom = 1.0 + sign * float(x @ Ax)
        dger(-sign / denom, Ax, Ax, a=Ainv.T, overwrite_a=True)
        dger(sign, x, x, a=self.A[k].T, overwrite_a=True)
        dger(sign, x, r, a=self.b[k].T, overwrite_a=True)

    def thetas(self, w: np.ndarray, k: int | None = None) -> np.ndarray:
        """``A_k^{-1} (w . b_k)`` for one arm, or all arms (K, d)."""
        if k is not None:
            return self.A_inv[k] @ (w @ self.b[k])
        return np.einsum("kij,kj->ki", self.A_inv, np.einsum("c,kcd->kd", w, self.b))

    def component_thetas(self, k: int) -> np.ndarray:
        """(C, d): one coefficient vector per reward component for arm ``k``."""
        return self.b[k] @ self.A_inv[k]  # A_inv symmetric

    # -- state ----------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "A": self.A,
            "A_inv": self.A_inv,
            "b": self.b,
            "pulls": self.pulls,
            "reward_sum": self.reward_sum,
        }
        if self.window is not None:
            lens = np.array([len(q) for q in self.buffers], dtype=np.int64)
            xs = [x for q in self.buffers for x, _ in q]
            rs = [r for q in self.buffers for _, r in q]
            out["buf_len"] = lens
            out["buf_x"] = np.array(xs).reshape(-1, self.dim)
            out["buf_r"] = np.array(rs).reshape(-1, N_COMPONENTS)
        return out

    def load(self, arms: list[str], arrays: Mapping[str, np.ndarray]) -> None:
        self.arms = list(arms)
        self.index = {a: i for i, a in enumerate(arms)}
        self.A, self.A_inv, self.b = arrays["A"], arrays["A_inv"], arrays["b"]
        self.pulls, self.reward_sum = arrays["pulls"], arrays["reward_sum"]
        self.buffers = [deque() for _ in arms]
        if "buf_len" in arrays:
            i = 0
            for k, n in enumerate(arrays["buf_len"].tolist()):
                for j in range(i, i + n):
                    self.buffers[k].append((arrays["buf_x"][j], arrays["buf_r"][j]))
                i += n


class LinearLearner:
    """Common machinery of LinUCB and linear Thompson sampling.

    Subclasses set ``kind`` and implement :meth:`_choose`. ``penalties`` (per
    arm, in reward units) are subtracted from scores before choosing; POLAR
    uses them for the paging cost of non-resident adapters.
    """

    kind: ClassVar[str] = ""

    def __init__(self, config: Any, dim: int, weights: Any = None):
        self.config = config
        self.dim = int(dim)
        self.version = 0
        self.weights = as_weights(weights)
        self.store = RidgeArms(self.dim, config.ridge, config.discount, config.window)
        self._theta = np.zeros((0, self.dim))
        self._idx_cache: dict[tuple[str, ...], np.ndarray] = {}

    # -- arms -----------------------------------------------------------

    @property
    def arms(self) -> list[str]:
        return list(self.store.arms)

    def add_arm(self, arm: str) -> None:
        if arm not in self.store.index:
            self.store.add(arm)
            self._theta = np.concatenate([self._theta, np.zeros((1, self.dim))])
            self._idx_cache.clear()

    def retire_arm(self, arm: str) -> None:
        """Forget an arm; if it comes back it starts fresh (and optimistic)."""
        if arm in self.store.index:
            k = self.store.index[arm]
            self.store.remove(arm)
            self._theta = np.delete(self._theta, k, axis=0)
            self._idx_cache.clear()

    def _indices(self, arms: Sequence[str]) -> np.ndarray:
        key = tuple(arms)
        idx = self._idx_cache.get(key)
        if idx is None:
            for a in key:
                self.add_arm(a)
            idx = np.array([self.store.index[a] for a in key], dtype=np.intp)
            self._idx_cache[key] = idx
        return idx

    # -- estimates ------------------------------------------------------

    def _context(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def estimates(self, x: np.ndarray, arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: (mean reward estimate, uncertainty width ``sqrt(x^T A^-1 x)``).

        Vectorised over ``arms``; unknown arms are added (mean 0, prior width).
        The mean uses the current objective weights; POLAR-style callers turn
        these into scores as ``mean + alpha * width - penalty``.
        """
        return self._estimates(self._context(x), self._indices(arms))

    def _estimates(self, z: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        K, d = self._theta.shape
        mean = (self._theta @ z)[idx]
        # one gemv over all arms' stacked inverses: no (K, d, d) copy
        quad = (self.store.A_inv.reshape(K * d, d) @ z).reshape(K, d) @ z
        width = np.sqrt(np.maximum(quad[idx], 0.0))
        return mean, width

    # -- Learner protocol -----------------------------------------------

    def select(
        self,
        x: np.ndarray,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
    ) -> Decision:
        if not arms:
            raise ValueError("no live arms")
        idx = self._indices(arms)
        mean, width = self._estimates(self._context(x), idx)
        if penalties:
            mean = mean - np.array([penalties.get(a, 0.0) for a in arms])
        untried = self.store.pulls[idx] < self.config.min_pulls
        i, props, scores = self._choose(mean, width, untried, rng)
        return Decision(
            arm=arms[i],
            propensities=dict(zip(arms, props.tolist(), strict=True)),
            scores=dict(zip(arms, scores.tolist(), strict=True)),
            version=self.version,
            learner=self.kind,
        )

    def _choose(
        self, mean: np.ndarray, width: np.ndarray, untried: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def update(self, batch: Sequence[RewardEvent]) -> None:
        for ev in batch:
            self.add_arm(ev.arm)
            k = self.store.index[ev.arm]
            r = np.ascontiguousarray(ev.reward, dtype=np.float64)
            self.store.update(k, np.ascontiguousarray(self._context(ev.context)), r)
            self._theta[k] = self.store.thetas(self.weights, k)
        if batch:
            self.version += 1

    def set_weights(self, weights: Any) -> None:
        self.weights = as_weights(weights)
        self._theta = self.store.thetas(self.weights) if len(self.store) else self._theta

    def arm_summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for k, arm in enumerate(self.store.arms):
            n = int(self.store.pulls[k])
            row: dict[str, float] = {"pulls": float(n)}
            means = self.store.reward_sum[k] / max(n, 1)
            for c, m in zip(REWARD_COMPONENTS, means, strict=True):
                row[f"mean_{c}"] = float(m) if n else float("nan")
            row["uncertainty"] = float(np.sqrt(np.trace(self.store.A_inv[k]) / self.dim))
            out[arm] = row
        return out

    # -- state ----------------------------------------------------------

    def state_bytes(self) -> bytes:
        header = {
            "kind": self.kind,
            "config": self.config.model_dump(mode="json", by_alias=True),
            "dim": self.dim,
            "version": self.version,
            "arms": self.store.arms,
        }
        arrays = {**self.store.arrays(), "theta": self._theta, "weights": self.weights}
        return pack(header, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearLearner:
        header, arrays = unpack(data)
        if header["kind"] != cls.kind:
            raise ValueError(f"state is for {header['kind']!r}, not {cls.kind!r}")
        config = cls.config_type().model_validate(header["config"])
        learner = cls(config, header["dim"], arrays["weights"])
        learner.version = int(header["version"])
        learner.store.load(header["arms"], arrays)
        learner._theta = arrays["theta"]
        return learner

    @classmethod
    def config_type(cls) -> Any:
        raise NotImplementedError
