"""The policies of an off-policy evaluation: a logger that writes a log from a
full-information data set, and the candidates replayed on a log.

Specs, as ``banditctl ope`` takes them:

- ``random``, ``linucb``, ``lints``, ... : a named learner config of
  :data:`learners.replay.presets.PRESETS` (else a bare learner kind);
- ``NAME:key=value[:key=value...]``: that config with fields replaced
  (``linucb:alpha=1``, ``lints:v=0.2:ridge=2``; values are read as JSON, else text);
- ``fixed:ARM``: always ``ARM`` (everything after ``fixed:``, so ``model:adapter`` arms
  work); ``epsilon:E``: epsilon-greedy with ``epsilon=E``;
- a JSON object with a ``kind`` (``{"kind": "linucb", "alpha": 0.5}``).

A candidate that learns is replayed the way it would have run, on the log in time
order: at each row it gives its probabilities over the arms (what the estimators
weigh), draws its own pick with its own generator, and learns from the row only when
that pick is the logged arm (Li et al., 2011, "unbiased offline evaluation of
contextual-bandit-based news article recommendation algorithms", generalised to
any known logging propensities by the estimators). What is estimated is the mean, over
the rows, of the value of the candidate's picks at each row in the state it had
reached there: on a log of ``n`` rows it learns from about ``n x`` (the share of rows
where its pick matches), so a learner is judged at the pace the log lets it learn,
which is slower than it would learn online on the same traffic.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from learners.base import Learner, RewardEvent
from learners.config import parse_config
from learners.featurize import Featurizer
from learners.registry import LEARNERS, make_learner
from learners.replay.presets import PRESETS, presets


def parse_policy_spec(spec: str, featurizer: Featurizer | None = None) -> dict[str, Any]:
    """A learner config (a dict with ``kind``) from a spec; ``ValueError`` when unknown.
    Presets read the task slots of ``featurizer`` (default: the default layout)."""
    named = PRESETS if featurizer is None else presets(featurizer)
    spec = spec.strip()
    if not spec:
        raise ValueError("empty policy spec")
    if spec.startswith("{"):
        config: dict[str, Any] = json.loads(spec)
    elif spec.startswith("fixed:"):
        config = {"kind": "fixed", "arm": spec.split(":", 1)[1]}
    elif spec.startswith("epsilon:"):
        config = {"kind": "epsilon_greedy", "epsilon": float(spec.split(":", 1)[1])}
    else:
        name, *fields = spec.split(":")
        if name in named:
            config = dict(named[name])
        elif name in LEARNERS:
            config = {"kind": name}
        else:
            raise ValueError(
                f"unknown policy {spec!r}: use one of {sorted(named)}, fixed:ARM, "
                "epsilon:E, NAME:key=value or a JSON config"
            )
        for field in fields:
            key, sep, raw = field.partition("=")
            if not sep or not key:
                raise ValueError(f"policy {spec!r}: {field!r} is not key=value")
            try:
                config[key] = json.loads(raw)
            except json.JSONDecodeError:
                config[key] = raw
    parse_config(config)  # raises a ValueError (pydantic's) naming the bad field
    return config


@dataclass(frozen=True)
class Candidate:
    """A policy to evaluate: ``make`` builds it fresh (or loads it); ``learns``: it is
    replayed learning from the rows where its pick is the logged arm, else frozen."""

    name: str
    make: Callable[[], Learner]
    learns: bool


def learner_candidate(
    name: str, config: dict[str, Any], dim: int, weights: np.ndarray
) -> Candidate:
    """A candidate from a learner config; it learns unless it is fixed or random."""
    cfg = dict(config)
    return Candidate(
        name,
        lambda: make_learner(cfg, dim, weights),
        learns=cfg["kind"] not in ("fixed", "random"),
    )


def with_weights(candidate: Candidate, weights: np.ndarray, label: str) -> Candidate:
    """The same policy choosing by other objective weights (``NAME@label``)."""
    make = candidate.make

    def build() -> Learner:
        learner = make()
        learner.set_weights(weights)
        return learner

    return Candidate(f"{candidate.name}@{label}", build, candidate.learns)


def stream_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of policy ``name`` in replay ``seed`` (independent across names)."""
    salt = int.from_bytes(name.encode()[-8:].ljust(8, b"\0"), "little")
    return np.random.default_rng([seed, salt, len(name)])


@dataclass
class CandidateRun:
    pi: np.ndarray  # (n, K) the candidate's probabilities at each row, before learning from it
    updates: int  # rows it learned from


def replay_candidate(
    candidate: Candidate,
    contexts: np.ndarray,
    actions: np.ndarray,
    propensities: np.ndarray,
    reward_vectors: np.ndarray,
    arms: Sequence[str],
    rng: np.random.Generator,
) -> CandidateRun:
    """Replay ``candidate`` on a log in row order (see the module's docstring)."""
    learner = candidate.make()
    live = list(arms)
    n = len(contexts)
    pi = np.empty((n, len(live)))
    updates = 0
    for t in range(n):
        x = contexts[t]
        d = learner.select(x, live, rng)
        pi[t] = [d.propensities.get(a, 0.0) for a in live]
        logged = live[int(actions[t])]
        if candidate.learns and d.arm == logged:
            learner.update([RewardEvent(x, logged, reward_vectors[t], float(propensities[t]))])
            updates += 1
    return CandidateRun(pi, updates)


@dataclass(frozen=True)
class ReplayLog:
    """One seed of a full-information data set logged under a logging policy.

    Rows are in stream order (``order`` maps them to the data set's rows). Only
    ``actions``, ``propensities`` and ``reward_vectors`` are what a real log would
    hold; ``logger_probs`` and ``full_rewards`` are the truth the estimates are
    checked against."""

    order: np.ndarray  # (n,) data set row of each stream row
    contexts: np.ndarray  # (n, d)
    actions: np.ndarray  # (n,) logged arm index
    propensities: np.ndarray  # (n,) the logger's probability of the logged arm
    logger_probs: np.ndarray  # (n, K) the logger's probabilities over every arm
    reward_vectors: np.ndarray  # (n, 4) reward vector of the logged arm
    full_rewards: np.ndarray  # (n, K) scalar reward of every arm under the objective

    @property
    def rewards(self) -> np.ndarray:
        """The logged arm's scalar reward."""
        out: np.ndarray = self.full_rewards[np.arange(len(self.actions)), self.actions]
        return out


def log_dataset(
    X: np.ndarray,
    R: np.ndarray,
    weights: np.ndarray,
    models: Sequence[str],
    logger: dict[str, Any],
    seed: int,
) -> ReplayLog:
    """Stream the data set in seed ``seed``'s order (the simulator's:
    ``default_rng(seed).permutation``) and let ``logger`` pick one model per row, learning
    from its own picks as it would online. ``X``: contexts (n, d); ``R``: reward vectors
    (n, K, 4)."""
    n = len(X)
    order = np.random.default_rng(seed).permutation(n)
    live = list(models)
    index = {m: i for i, m in enumerate(live)}
    learner = make_learner(logger, X.shape[1], weights)
    rng = stream_rng(seed, "logger")
    actions = np.empty(n, dtype=np.intp)
    probs = np.empty((n, len(live)))
    for step, t in enumerate(order):
        d = learner.select(X[t], live, rng)
        k = index[d.arm]
        actions[step] = k
        probs[step] = [d.propensities[a] for a in live]
        learner.update([RewardEvent(X[t], d.arm, R[t, k], d.propensity)])
    rows = np.arange(n)
    return ReplayLog(
        order=order,
        contexts=X[order],
        actions=actions,
        propensities=probs[rows, actions],
        logger_probs=probs,
        reward_vectors=R[order, actions],
        full_rewards=R[order] @ np.asarray(weights, dtype=float),
    )
