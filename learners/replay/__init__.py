"""Offline replay of routing data sets: bandit feedback only, seeded, with references."""

from learners.replay.simulator import ReplayResult, run_replay, summarize

__all__ = ["ReplayResult", "run_replay", "summarize"]
