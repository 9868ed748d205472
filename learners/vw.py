"""Vowpal Wabbit contextual bandit (``--cb_explore_adf``) through ``vowpal-wabbit-next``.

Each decision is one multi-line example: a ``shared`` line with the context
(namespace ``s``, feature ``i`` for position ``i``, zeros dropped) and one line
per live arm (namespace ``a``, feature ``arm=<name>``), crossed by ``-q sa``
so each arm gets its own weights. Exploration is VW's: SquareCB by default,
or epsilon-greedy, bagging, cover, softmax, RegCB or explore-first by config.
The propensity is VW's pmf for the sampled arm.

State round-trips exactly for squarecb, epsilon, softmax and RegCB; bagging and
cover draw from VW's internal random state, which its model bytes do not hold,
so after a reload their decisions are equivalent in law but not identical.

VW learns a scalar cost, so the reward vector is scalarized with the weights
in force at update time; new weights apply to what is learned afterwards.
``estimates`` are each arm's mean reward so far (width 1), as for the baselines:
the exploration reductions give a pmf, not VW's predicted rewards.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import vowpal_wabbit_next as vw
from typing_extensions import override

from learners.base import Decision, RewardEvent
from learners.baselines import _MeanLearner
from learners.config import VWConfig
from learners.state import pack, unpack

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def vw_args(cfg: VWConfig) -> list[str]:
    args = [
        "--cb_explore_adf",
        "--quiet",
        "--preserve_performance_counters",
        "-l",
        str(cfg.learning_rate),
    ]
    for q in cfg.interactions:
        args += ["-q", q]
    exp = cfg.exploration
    if exp == "squarecb":
        args += ["--squarecb", "--gamma_scale", str(cfg.gamma_scale)]
    elif exp == "epsilon":
        args += ["--epsilon", str(cfg.epsilon)]
    elif exp == "bag":
        args += ["--bag", str(cfg.bag), "--epsilon", str(cfg.epsilon)]
    elif exp == "cover":
        args += ["--cover", str(cfg.cover), "--epsilon", str(cfg.epsilon)]
    elif exp == "softmax":
        args += ["--softmax", "--lambda", str(cfg.lambda_)]
    elif exp == "regcb":
        args += ["--regcb"]
    elif exp == "first":
        args += ["--first", str(cfg.first)]
    return args + list(cfg.extra_args)


class VWLearner(_MeanLearner):
    kind: ClassVar[str] = "vw"
    config_cls: ClassVar[Any] = VWConfig
    config: VWConfig

    def __init__(
        self,
        config: VWConfig | None = None,
        dim: int = 64,
        weights: Any = None,
        model_data: bytes | None = None,
    ):
        super().__init__(config or VWConfig(), dim, weights)
        self._ws = vw.Workspace(vw_args(self.config), model_data=model_data)
        self._parser = vw.TextFormatParser(self._ws)
        self._names: dict[str, str] = {}

    def _arm_line(self, arm: str) -> str:
        name = self._names.get(arm)
        if name is None:
            name = self._names[arm] = "|a arm=" + _UNSAFE.sub("_", arm)
        return name

    def _shared(self, x: np.ndarray) -> str:
        nz = np.flatnonzero(x)
        return "shared |s " + " ".join(f"{i}:{x[i]:.6g}" for i in nz.tolist())

    def _examples(
        self, x: np.ndarray, arms: Sequence[str], label: tuple[int, str] | None
    ) -> list[Any]:
        lines = [self._shared(np.asarray(x, dtype=np.float64))]
        for j, a in enumerate(arms):
            line = self._arm_line(a)
            if label is not None and label[0] == j:
                line = f"{label[1]} {line}"
            lines.append(line)
        return [self._parser.parse_line(s) for s in lines]

    def pmf(self, x: np.ndarray, arms: Sequence[str]) -> np.ndarray:
        probs = np.zeros(len(arms))
        pred: Any = self._ws.predict_one(self._examples(x, arms, None))  # [(index, prob)]
        for idx, p in pred:
            probs[int(idx)] = float(p)
        total = probs.sum()
        return probs / total if total > 0 else np.full(len(arms), 1.0 / len(arms))

    @override
    def select(
        self,
        x: np.ndarray,
        arms: Sequence[str],
        rng: np.random.Generator,
        penalties: Mapping[str, float] | None = None,
        width_scale: Mapping[str, float] | None = None,
    ) -> Decision:
        """VW's pmf and a draw from it; ``penalties`` and ``width_scale`` are ignored (the
        pmf is VW's exploration, and its propensities must stay VW's)."""
        if not arms:
            raise ValueError("no live arms")
        for a in arms:
            self.add_arm(a)
        probs = self.pmf(x, arms)
        i = int(rng.choice(len(arms), p=probs))
        d = dict(zip(arms, probs.tolist(), strict=True))
        return Decision(arms[i], d, dict(d), self.version, self.kind)

    def update(self, batch: Sequence[RewardEvent]) -> None:
        """Learn each event against the arms live at its decision.

        ``meta["arms"]`` lists them (in decision order); without it, the arms
        this learner has seen are used.
        """
        for ev in batch:
            raw = ev.meta.get("arms")
            arms = list(raw) if isinstance(raw, list | tuple) else list(self.pulls) or [ev.arm]
            if ev.arm not in arms:
                arms.append(ev.arm)
            cost = -float(np.asarray(ev.reward, dtype=np.float64) @ self.weights)
            label = f"0:{cost:.9g}:{max(float(ev.propensity), 1e-6):.9g}"
            self._ws.learn_one(self._examples(ev.context, arms, (arms.index(ev.arm), label)))
        super().update(batch)

    def state_bytes(self) -> bytes:
        base_header, arrays = unpack(super().state_bytes())
        arrays["model"] = np.frombuffer(self._ws.serialize(), dtype=np.uint8)
        return pack(base_header, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> VWLearner:
        header, arrays = unpack(data)
        if header["kind"] != cls.kind:
            raise ValueError(f"state is for {header['kind']!r}, not {cls.kind!r}")
        cfg = VWConfig.model_validate(header["config"])
        learner = cls(cfg, header["dim"], arrays["weights"], model_data=arrays["model"].tobytes())
        learner.version = int(header["version"])
        for i, a in enumerate(header["arms"]):
            learner.pulls[a] = int(arrays["pulls"][i])
            learner.sums[a] = arrays["sums"][i].copy()
        return learner
