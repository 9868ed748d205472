"""Context-free reference learners: uniform random, a fixed arm, epsilon-greedy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from typing_extensions import override

from learners._choice import argmax_ties
from learners.base import N_COMPONENTS, REWARD_COMPONENTS, Decision, Learner, RewardEvent
from learners.config import EpsilonGreedyConfig, FixedConfig, RandomConfig
from learners.linear import as_weights
from learners.state import pack, unpack


class _MeanLearner(Learner):
    """Per-arm pull counts and reward sums; subclasses implement :meth:`_choose`.

    No confidence widths: :meth:`estimates` gives each arm's mean reward so far
    (0 for an arm never pulled) and a width of 1, and ``width_scale`` is ignored.
    """

    kind: ClassVar[str] = ""
    config_cls: ClassVar[Any] = None
    greedy_by_estimates: ClassVar[bool] = False

    def __init__(self, config: Any = None, dim: int = 0, weights: Any = None):
        self.config = config if config is not None else self.config_cls()
        self.dim = int(dim)
        self.version = 0
        self.weights = as_weights(weights)
        self.pulls: dict[str, int] = {}
        self.sums: dict[str, np.ndarray] = {}

    def add_arm(self, arm: str) -> None:
        self.pulls.setdefault(arm, 0)
        self.sums.setdefault(arm, np.zeros(N_COMPONENTS))

    def retire_arm(self, arm: str) -> None:
        self.pulls.pop(arm, None)
        self.sums.pop(arm, None)

    def mean_rewards(self, arms: Sequence[str]) -> np.ndarray:
        """Scalarized mean reward per arm; +inf for arms never pulled (optimism)."""
        out = np.full(len(arms), np.inf)
        for i, a in enumerate(arms):
            n = self.pulls.get(a, 0)
            if n:
                out[i] = float(self.sums[a] @ self.weights) / n
        return out

    @override
    def estimates(self, x: np.ndarray, arms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        mean = self.mean_rewards(arms)
        return np.where(np.isinf(mean), 0.0, mean), np.ones(len(arms))

    @override
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
        i, props, scores = self._choose(arms, rng, penalties)
        return Decision(
            arm=arms[i],
            propensities=dict(zip(arms, props.tolist(), strict=True)),
            scores=dict(zip(arms, scores.tolist(), strict=True)),
            version=self.version,
            learner=self.kind,
        )

    def _choose(
        self,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """Index chosen, propensities and scores; ``penalties`` as in ``select``."""
        raise NotImplementedError

    def update(self, batch: Sequence[RewardEvent]) -> None:
        for ev in batch:
            self.add_arm(ev.arm)
            self.pulls[ev.arm] += 1
            self.sums[ev.arm] = self.sums[ev.arm] + np.asarray(ev.reward, dtype=np.float64)
        if batch:
            self.version += 1

    def set_weights(self, weights: Any) -> None:
        self.weights = as_weights(weights)

    def arm_summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for a, n in self.pulls.items():
            row = {"pulls": float(n)}
            for c, s in zip(REWARD_COMPONENTS, self.sums[a], strict=True):
                row[f"mean_{c}"] = float(s / n) if n else float("nan")
            row["uncertainty"] = float(1.0 / np.sqrt(n)) if n else float("inf")
            out[a] = row
        return out

    def state_bytes(self) -> bytes:
        arms = list(self.pulls)
        header = {
            "kind": self.kind,
            "config": self.config.model_dump(mode="json"),
            "dim": self.dim,
            "version": self.version,
            "arms": arms,
        }
        arrays = {
            "pulls": np.array([self.pulls[a] for a in arms], dtype=np.int64),
            "sums": np.array([self.sums[a] for a in arms]).reshape(-1, N_COMPONENTS),
            "weights": self.weights,
        }
        return pack(header, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> Any:
        header, arrays = unpack(data)
        if header["kind"] != cls.kind:
            raise ValueError(f"state is for {header['kind']!r}, not {cls.kind!r}")
        learner = cls(
            cls.config_cls.model_validate(header["config"]), header["dim"], arrays["weights"]
        )
        learner.version = int(header["version"])
        for i, a in enumerate(header["arms"]):
            learner.pulls[a] = int(arrays["pulls"][i])
            learner.sums[a] = arrays["sums"][i].copy()
        return learner


class RandomLearner(_MeanLearner):
    """Uniform over the live arms: propensity 1/K (penalties ignored)."""

    kind: ClassVar[str] = "random"
    config_cls: ClassVar[Any] = RandomConfig

    @override
    def _choose(
        self,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        k = len(arms)
        return int(rng.integers(k)), np.full(k, 1.0 / k), np.zeros(k)


class FixedArm(_MeanLearner):
    """Always ``config.arm``; uniform over the live arms while it is not live (penalties
    ignored)."""

    kind: ClassVar[str] = "fixed"
    config_cls: ClassVar[Any] = FixedConfig

    def __init__(self, config: FixedConfig, dim: int = 0, weights: Any = None):
        super().__init__(config, dim, weights)

    @override
    def _choose(
        self,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        k = len(arms)
        if self.config.arm in arms:
            i = list(arms).index(self.config.arm)
            props = np.zeros(k)
            props[i] = 1.0
            return i, props, props.copy()
        return int(rng.integers(k)), np.full(k, 1.0 / k), np.zeros(k)


class EpsilonGreedy(_MeanLearner):
    """The best empirical mean (less any penalty) with probability 1 - epsilon, else uniform.

    Never-pulled arms have an infinite mean, so each is tried first.
    """

    kind: ClassVar[str] = "epsilon_greedy"
    config_cls: ClassVar[Any] = EpsilonGreedyConfig

    def _choose(
        self,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
    ) -> tuple[int, np.ndarray, np.ndarray]:
        k = len(arms)
        means = self.mean_rewards(arms)
        if penalties:
            means = means - np.array([penalties.get(a, 0.0) for a in arms])
        eps = self.config.epsilon
        greedy_i, greedy_p = argmax_ties(means, rng)
        props = (1.0 - eps) * greedy_p + eps / k
        i = greedy_i if rng.random() >= eps else int(rng.integers(k))
        scores = np.where(np.isfinite(means), means, np.finfo(float).max)
        return i, props, scores
