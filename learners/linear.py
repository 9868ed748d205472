"""Disjoint linear models per arm, vectorised over arms, one per reward component.

Each arm ``k`` keeps ``A_k = ridge I + sum x x^T`` and its inverse (kept by
Sherman-Morrison rank-one updates), ``b_k[c] = sum r_c x`` and the ridge
solution ``theta_k[c] = A_k^{-1} b_k[c]`` for every reward component ``c``
(updated in O(C d) per event with the same rank-one algebra, recursive least
squares). All components share ``A_k`` (they see the same contexts), so the
objective's weights ``w`` combine them into one cached ``theta_k = sum_c w_c
theta_k[c]``; new weights need no relearning.

Hot path: a decision is one compiled pass over the stacked inverses (widths
``sqrt(x^T A_k^-1 x)``, means and UCB scores of every arm); an update is one
compiled O(C d^2) rank-one update of the chosen arm (:mod:`learners._kernels`).
Nothing in it loops over arms in Python or touches pydantic.
:meth:`LinearLearner.select_many` scores many contexts at once.

Forgetting (for drifting arms): ``discount`` gamma < 1 shrinks each arm's data
part of ``A`` and ``b`` by gamma on every update of that arm (the ridge prior
stays); ``window`` keeps only each arm's last N events, removing the oldest
with a Sherman-Morrison downdate.

``context_indices`` (config) restricts a learner to some positions of the
featurizer's vector (GreenServ's task-only view, or a compact task + length
block).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from learners._kernels import rank_one, score_arms
from learners.base import N_COMPONENTS, REWARD_COMPONENTS, Decision, RewardEvent
from learners.metadata_prior import ArmPrior, arm_prior
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
    """Per-arm ridge regression state, stacked along a leading arm axis.

    ``M[k]`` is ``A_k^{-1}`` (rows ``:d``) stacked over ``theta_k`` (rows
    ``d:``, one per reward component), so one product ``M[k] @ x`` gives both
    ``A^-1 x`` and every component's prediction, and one rank-one update
    changes both. ``A`` and ``b`` are not needed to decide; their rank-one
    updates are queued and applied in bulk when they are read (or every
    ``_FLUSH`` events), which gives the same values up to rounding.

    Each arm's prior (``arm_prior_diag[k]``, ``arm_b0[k]``) is the flat one
    (``prior_diag``, ``b0``) unless ``arm_prior(arm)`` gives its own mean reward
    vector and strength (:mod:`learners.metadata_prior`): then the intercept's
    prior mean is that vector and its precision is raised by the strength.
    """

    _FLUSH = 512

    def __init__(
        self,
        dim: int,
        ridge: float,
        discount: float = 1.0,
        window: int | None = None,
        prior_mean: Sequence[float] | None = None,
        ridge_scale: Sequence[float] | None = None,
        arm_prior: ArmPrior | None = None,
    ):
        self.dim, self.ridge, self.discount, self.window = dim, ridge, discount, window
        # prior precision per coefficient: ridge, times ridge_scale[j] where given
        scale = np.ones(dim) if ridge_scale is None else np.asarray(ridge_scale, float)
        if scale.shape != (dim,):
            raise ValueError(f"ridge_scale needs {dim} entries (one per context position)")
        self.prior_diag = ridge * scale
        # prior mean of the first coefficient (the intercept) per component:
        # A = ridge I, b = ridge theta0 before any data, so theta starts at theta0
        self.b0 = np.zeros((N_COMPONENTS, dim))
        if prior_mean is not None:
            self.b0[:, 0] = self.prior_diag[0] * np.asarray(prior_mean, dtype=np.float64)
        self.arm_prior = arm_prior
        self.arm_prior_diag = np.zeros((0, dim))  # (K, d): each arm's prior precision
        self.arm_b0 = np.zeros((0, N_COMPONENTS, dim))  # (K, C, d): each arm's prior b
        self.arms: list[str] = []
        self.index: dict[str, int] = {}
        self.w = default_weights()  # objective weights of the combined theta row
        self.M = np.zeros((0, dim + N_COMPONENTS + 1, dim))
        self._A = np.zeros((0, dim, dim))
        self._b = np.zeros((0, N_COMPONENTS, dim))
        # queued rank-one updates of A and b: arm, x, r, sign (rows [:_n_pending])
        self._pend_k = np.zeros(self._FLUSH, dtype=np.intp)
        self._pend_x = np.zeros((self._FLUSH, dim))
        self._pend_r = np.zeros((self._FLUSH, N_COMPONENTS))
        self._pend_s = np.zeros(self._FLUSH)
        self._n_pending = 0
        self.pulls = np.zeros(0, dtype=np.int64)
        self._reward_sum = np.zeros((0, N_COMPONENTS))
        self.buffers: list[deque[tuple[np.ndarray, np.ndarray]]] = []

    def __len__(self) -> int:
        return len(self.arms)

    @property
    def A_inv(self) -> np.ndarray:
        """(K, d, d) view of the inverses."""
        return self.M[:, : self.dim]

    @property
    def theta_c(self) -> np.ndarray:
        """(K, C, d) view: ``A_k^{-1} b_k[c]`` per arm and reward component."""
        return self.M[:, self.dim : self.dim + N_COMPONENTS]

    @property
    def theta_w(self) -> np.ndarray:
        """(K, d) view: ``sum_c w_c theta_k[c]``, the combined theta for the weights ``w``."""
        return self.M[:, self.dim + N_COMPONENTS]

    def set_weights(self, w: np.ndarray) -> None:
        self.w = np.asarray(w, dtype=np.float64).copy()
        if len(self.arms):
            self.M[:, self.dim + N_COMPONENTS] = np.einsum("c,kcd->kd", self.w, self.theta_c)

    @property
    def A(self) -> np.ndarray:
        self._flush()
        return self._A

    @property
    def b(self) -> np.ndarray:
        self._flush()
        return self._b

    @property
    def reward_sum(self) -> np.ndarray:
        """(K, C): sum of every reward vector each arm was updated with."""
        self._flush()
        return self._reward_sum

    def _flush(self) -> None:
        """Apply the queued ``A += s x x^T``, ``b += s r x^T`` (grouped by arm) and reward sums."""
        n = self._n_pending
        if not n:
            return
        self._n_pending = 0
        ks, X, R = self._pend_k[:n], self._pend_x[:n], self._pend_r[:n]
        sign = self._pend_s[:n, None]
        added = sign[:, 0] > 0  # a window's downdates leave the reward sums alone
        np.add.at(self._reward_sum, ks[added], R[added])
        Rs, Xs = R * sign, X * sign
        for k in np.unique(ks).tolist():
            rows = ks == k
            self._A[k] += Xs[rows].T @ X[rows]
            self._b[k] += Rs[rows].T @ X[rows]

    def prior_of(self, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """``arm``'s prior precision (d,) and prior ``b`` (C, d): the flat ones, or its
        own mean vector on the intercept with the precision raised by its strength."""
        own = None if self.arm_prior is None else self.arm_prior(arm)
        if own is None:
            return self.prior_diag, self.b0
        means, strength = own
        diag = self.prior_diag.copy()
        diag[0] += strength
        b0 = self.b0.copy()
        b0[:, 0] = diag[0] * np.asarray(means, dtype=np.float64)
        return diag, b0

    def add(self, arm: str) -> int:
        self._flush()
        d = self.dim
        self.index[arm] = len(self.arms)
        self.arms.append(arm)
        diag, b0 = self.prior_of(arm)
        block = np.zeros((1, d + N_COMPONENTS + 1, d))
        block[0, :d] = np.diag(1.0 / diag)
        block[0, d : d + N_COMPONENTS] = b0 / diag
        block[0, d + N_COMPONENTS] = self.w @ block[0, d : d + N_COMPONENTS]
        self.M = np.concatenate([self.M, block])
        self._A = np.concatenate([self._A, np.diag(diag)[None]])
        self._b = np.concatenate([self._b, b0[None]])
        self.arm_prior_diag = np.concatenate([self.arm_prior_diag, diag[None]])
        self.arm_b0 = np.concatenate([self.arm_b0, b0[None]])
        self.pulls = np.append(self.pulls, 0)
        self._reward_sum = np.concatenate([self._reward_sum, np.zeros((1, N_COMPONENTS))])
        self.buffers.append(deque())
        return self.index[arm]

    def remove(self, arm: str) -> None:
        self._flush()
        k = self.index.pop(arm)
        self.arms.pop(k)
        keep = np.arange(len(self.pulls)) != k
        self.M, self._A, self._b = self.M[keep], self._A[keep], self._b[keep]
        self.arm_prior_diag, self.arm_b0 = self.arm_prior_diag[keep], self.arm_b0[keep]
        self.pulls, self._reward_sum = self.pulls[keep], self._reward_sum[keep]
        self.buffers.pop(k)
        self.index = {a: i for i, a in enumerate(self.arms)}

    def update(self, k: int, x: np.ndarray, r: np.ndarray) -> None:
        self.pulls[k] += 1
        if self.discount < 1.0:
            self._flush()
            self._reward_sum[k] += r
            g, d, eye, b0 = self.discount, self.dim, np.diag(self.arm_prior_diag[k]), self.arm_b0[k]
            A = eye + g * (self._A[k] - eye) + np.outer(x, x)
            self._A[k] = A
            A_inv = np.linalg.inv(A)
            self._b[k] = b0 + g * (self._b[k] - b0) + r[:, None] * x[None, :]
            self.M[k, :d] = A_inv
            self.M[k, d : d + N_COMPONENTS] = self._b[k] @ A_inv  # A_inv symmetric
            self.M[k, d + N_COMPONENTS] = self.w @ self.M[k, d : d + N_COMPONENTS]
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

        With ``u = A^-1 x`` and ``s = 1 + sign x.u``: ``A^-1 -= sign u u^T / s``
        and ``theta[c] += sign (r_c - x.theta[c]) u / s`` (exact algebra, no
        solve). Both are one rank-one update of ``M[k]``
        (:func:`learners._kernels.rank_one`).
        """
        rank_one(self.M[k], x, r, self.w, sign)
        i = self._n_pending
        self._pend_k[i] = k
        self._pend_x[i] = x
        self._pend_r[i] = r
        self._pend_s[i] = sign
        self._n_pending = i + 1
        if i + 1 == self._FLUSH:
            self._flush()

    def thetas(self, w: np.ndarray, k: int | None = None) -> np.ndarray:
        """``sum_c w_c theta_k[c]`` for one arm (d,), or all arms (K, d)."""
        theta: np.ndarray = (
            w @ self.theta_c[k] if k is not None else np.einsum("c,kcd->kd", w, self.theta_c)
        )
        return theta

    def component_thetas(self, k: int) -> np.ndarray:
        """(C, d): one coefficient vector per reward component for arm ``k``."""
        theta: np.ndarray = self.theta_c[k].copy()
        return theta

    # -- state ----------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        self._flush()
        out = {
            "A": self._A,
            "A_inv": np.ascontiguousarray(self.A_inv),
            "b": self._b,
            "theta_c": np.ascontiguousarray(self.theta_c),
            "theta": np.ascontiguousarray(self.theta_w),
            "pulls": self.pulls,
            "reward_sum": self._reward_sum,
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
        self._A, self._b, self._n_pending = arrays["A"], arrays["b"], 0
        priors = [self.prior_of(a) for a in arms]
        self.arm_prior_diag = np.array([p for p, _ in priors]).reshape(len(arms), self.dim)
        self.arm_b0 = np.array([b for _, b in priors]).reshape(len(arms), N_COMPONENTS, self.dim)
        A_inv = arrays["A_inv"]
        if "theta_c" in arrays:
            theta_c = arrays["theta_c"]
        else:  # states written before theta_c was kept
            theta_c = np.einsum("kcd,kde->kce", self._b, A_inv)
        theta_w = arrays.get("theta")
        if theta_w is None:
            theta_w = np.einsum("c,kcd->kd", self.w, theta_c)
        self.M = np.ascontiguousarray(np.concatenate([A_inv, theta_c, theta_w[:, None]], axis=1))
        self.pulls, self._reward_sum = arrays["pulls"], arrays["reward_sum"]
        self.buffers = [deque() for _ in arms]
        if "buf_len" in arrays:
            i = 0
            for k, n in enumerate(arrays["buf_len"].tolist()):
                for j in range(i, i + n):
                    self.buffers[k].append((arrays["buf_x"][j], arrays["buf_r"][j]))
                i += n


class LinearLearner:
    """Common machinery of LinUCB and linear Thompson sampling.

    Subclasses set ``kind`` and implement :meth:`_choose`. ``width_scale`` (per
    arm) multiplies widths and ``penalties`` (per arm, in reward units) are
    subtracted from means and scores before choosing; POLAR prices adapters
    resident nowhere with them (``cache_manager.router``).
    """

    kind: ClassVar[str] = ""
    greedy_by_estimates: ClassVar[bool] = True
    _bonus: float = 0.0  # weight of the width in the third row of the estimates (UCB)

    def __init__(self, config: Any, dim: int, weights: Any = None):
        self.config = config
        self.full_dim = int(dim)
        cols = config.context_indices
        if cols is not None and max(cols) >= self.full_dim:
            raise ValueError(f"context_indices exceed the context dimension {dim}")
        self._cols = None if cols is None else np.array(cols, dtype=np.intp)
        self.dim = self.full_dim if cols is None else len(cols)
        self.version = 0
        self.weights = as_weights(weights)
        self.store = RidgeArms(
            self.dim,
            config.ridge,
            config.discount,
            config.window,
            config.prior_mean,
            config.ridge_scale,
            arm_prior(config.metadata_prior, config.prior_mean or np.zeros(N_COMPONENTS)),
        )
        self._idx_cache: dict[tuple[str, ...], tuple[np.ndarray, bool]] = {}
        # plain copies of config values read on every decision (no pydantic access there)
        self._min_pulls = int(config.min_pulls)
        self._new_arm_score = float(config.new_arm_score)
        self._all_tried = True  # every known arm has min_pulls updates
        self.store.set_weights(self.weights)

    # -- arms -----------------------------------------------------------

    @property
    def arms(self) -> list[str]:
        return list(self.store.arms)

    def add_arm(self, arm: str) -> None:
        if arm not in self.store.index:
            self.store.add(arm)
            self._idx_cache.clear()
            self._all_tried = self._min_pulls == 0

    def retire_arm(self, arm: str) -> None:
        """Forget an arm; if it comes back it starts fresh (and optimistic)."""
        if arm in self.store.index:
            self.store.remove(arm)
            self._idx_cache.clear()
            self._refresh_tried()

    def _refresh_tried(self) -> None:
        self._all_tried = bool(np.all(self.store.pulls >= self._min_pulls))

    def _indices(self, arms: Sequence[str]) -> tuple[np.ndarray, bool]:
        """Store rows of ``arms``, and whether they are all rows in store order."""
        key = tuple(arms)
        hit = self._idx_cache.get(key)
        if hit is None:
            for a in key:
                self.add_arm(a)
            idx = np.array([self.store.index[a] for a in key], dtype=np.intp)
            hit = (idx, len(key) == len(self.store) and bool(np.all(idx == np.arange(len(idx)))))
            self._idx_cache[key] = hit
        return hit

    # -- estimates ------------------------------------------------------

    def _context(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float64)
        return np.ascontiguousarray(z if self._cols is None else z[..., self._cols])

    def estimates(self, x: np.ndarray, arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: (mean reward estimate, uncertainty width ``sqrt(x^T A^-1 x)``).

        Vectorised over ``arms``; unknown arms are added (mean 0, prior width).
        The mean uses the current objective weights; POLAR-style callers turn
        these into scores as ``mean + alpha * width - penalty``.
        """
        idx, full = self._indices(arms)
        return self._estimates(self._context(x), idx, full)

    def _estimates(
        self, z: np.ndarray, idx: np.ndarray, full: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        est = self._scored(z, idx, full)
        return est[0], est[1]

    def _scored(self, z: np.ndarray, idx: np.ndarray, full: bool) -> np.ndarray:
        """(3, arms): means, widths and ``mean + bonus width`` (one compiled pass)."""
        M = self.store.M
        est = np.empty((3, len(M)))
        score_arms(M, z, self._bonus, est)
        return est if full else est[:, idx]

    def _estimates_many(self, Z: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, arms) means and widths for n contexts: one matrix product."""
        M = self.store.M
        K, e, d = M.shape
        n = len(Z)
        P = (Z @ M.reshape(K * e, d).T).reshape(n, K, e)
        quad = np.einsum("nkd,nd->nk", P[:, :, :d], Z)
        mean = P[:, :, e - 1]
        return mean[:, idx], np.sqrt(np.maximum(quad[:, idx], 0.0))

    # -- Learner protocol -----------------------------------------------

    def select(
        self,
        x: np.ndarray,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
        width_scale: Mapping[str, float] | None = None,
    ) -> Decision:
        if not arms:
            raise ValueError("no live arms")
        idx, full = self._indices(arms)
        est = self._scored(self._context(x), idx, full)
        return self._decide(arms, idx, est, rng, penalties, width_scale)

    def select_many(
        self,
        X: np.ndarray,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
        width_scale: Mapping[str, float] | None = None,
    ) -> list[Decision]:
        """Decisions for many contexts (rows of ``X``) under the current state.

        The estimates of all rows come from two matrix products; the choice
        rule then runs per row, consuming ``rng`` exactly as that many
        :meth:`select` calls would (no update between them).
        """
        if not arms:
            raise ValueError("no live arms")
        idx, _ = self._indices(arms)
        Z = np.atleast_2d(self._context(X))
        mean, width = self._estimates_many(Z, idx)
        est = np.stack([mean, width, mean + self._bonus * width], axis=1)  # (n, 3, arms)
        return [self._decide(arms, idx, est[i], rng, penalties, width_scale) for i in range(len(Z))]

    def _decide(
        self,
        arms: Sequence[str],
        idx: np.ndarray,
        est: np.ndarray,
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None,
        width_scale: Mapping[str, float] | None = None,
    ) -> Decision:
        if width_scale or penalties:
            est = est.copy()
            if width_scale:
                est[1] *= np.array([width_scale.get(a, 1.0) for a in arms])
                est[2] = est[0] + self._bonus * est[1]
            if penalties:
                pen = np.array([penalties.get(a, 0.0) for a in arms])
                est[0] -= pen
                est[2] -= pen
        untried = None if self._all_tried else self.store.pulls[idx] < self._min_pulls
        i, props, scores = self._choose(est, untried, rng)
        return Decision.make(
            arms[i],
            dict(zip(arms, props, strict=True)),
            dict(zip(arms, scores, strict=True)),
            self.version,
            self.kind,
        )

    def _choose(
        self, est: np.ndarray, untried: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[int, list[float], list[float]]:
        """Index chosen, propensities and scores (as lists) from ``est`` (rows: means,
        widths, ``mean + bonus width``, widths already scaled and penalties
        subtracted); ``untried`` None: none."""
        raise NotImplementedError

    def update(self, batch: Sequence[RewardEvent]) -> None:
        store = self.store
        for ev in batch:
            k = store.index.get(ev.arm)
            if k is None:
                self.add_arm(ev.arm)
                k = store.index[ev.arm]
            r = np.ascontiguousarray(ev.reward, dtype=np.float64)
            x = np.ascontiguousarray(ev.context, dtype=np.float64)
            store.update(k, x if self._cols is None else x[self._cols], r)
        if batch:
            self.version += 1
            if not self._all_tried:
                self._refresh_tried()

    def set_weights(self, weights: Any) -> None:
        self.weights = as_weights(weights)
        self.store.set_weights(self.weights)

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
            "dim": self.full_dim,
            "version": self.version,
            "arms": self.store.arms,
        }
        arrays = {**self.store.arrays(), "weights": self.weights}
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
        learner._refresh_tried()
        return learner

    @classmethod
    def config_type(cls) -> Any:
        raise NotImplementedError
