from __future__ import annotations

import numpy as np
import pytest

from cache_manager.clock import ManualClock
from cache_manager.demand import DemandTracker
from cache_manager.executor import InMemoryExecutor
from cache_manager.paging import PagingCostModel
from cache_manager.scorer import LinUCBScorer

ARMS = tuple(f"a{i}" for i in range(6))


@pytest.fixture
def paging() -> PagingCostModel:
    return PagingCostModel(adapter_mib=dict.fromkeys(ARMS, 64.0), latency_weight_per_s=5.0)


@pytest.fixture
def executor() -> InMemoryExecutor:
    return InMemoryExecutor({"r0": 2, "r1": 2}, load=lambda _r, _a: 0.01)


@pytest.fixture
def scorer() -> LinUCBScorer:
    return LinUCBScorer(ARMS, 3)


@pytest.fixture
def tracker() -> DemandTracker:
    return DemandTracker(2, 3, half_life_s=10.0, rng=np.random.default_rng(0), warmup=2)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
