"""Paging cost: how long bringing an adapter in takes, and what that costs in reward.

Load times come from the fake adapters of :mod:`cache_manager.fake_adapter`,
measured with ``bench/bench_adapter_load.py`` on the project's 2-core machines
(numpy allocate + copy, 100 loads per rank after a warm-up)::

    rank  MiB   median ms  sigma(log s)
       8   16      3.2        0.10
      16   32     10.3        0.08
      32   64     17.4        0.09
      64  128     29.4        0.16
    fit through the origin: median = 0.24 ms per MiB

An earlier run under CPU contention gave 0.45 ms/MiB with sigma(log) 0.35. The model
is therefore lognormal: ``load_s ~ LogNormal(log(0.24 ms * MiB), 0.25)`` (a sigma
between the quiet and the contended runs). :class:`PagingCostModel` turns seconds
into reward units through the objective's latency coefficient (reward per second),
which is what the cache-aware router subtracts for an adapter resident nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cache_manager.fake_adapter import FakeAdapterSpec

MEASURED_MS_PER_MIB = 0.24
MEASURED_SIGMA_LOG = 0.25


class PagingCostModel(BaseModel):
    """Per-adapter load-time distribution and its price in reward units."""

    model_config = ConfigDict(frozen=True)

    adapter_mib: dict[str, float] = Field(description="adapter name -> size in MiB")
    ms_per_mib: float = Field(default=MEASURED_MS_PER_MIB, gt=0)
    sigma_log: float = Field(default=MEASURED_SIGMA_LOG, ge=0)
    latency_weight_per_s: float = Field(
        default=5.0, ge=0, description="objective's latency coefficient, reward lost per second"
    )

    def median_s(self, adapter: str) -> float:
        return self.ms_per_mib * self.adapter_mib[adapter] / 1e3

    def expected_s(self, adapter: str) -> float:
        return self.median_s(adapter) * float(np.exp(0.5 * self.sigma_log**2))

    def penalty(self, adapter: str) -> float:
        """Expected reward lost by paging ``adapter`` in on the request path."""
        return self.latency_weight_per_s * self.expected_s(adapter)

    def penalties(self, adapters: list[str] | tuple[str, ...]) -> np.ndarray:
        return np.array([self.penalty(a) for a in adapters])

    def sample_s(self, adapter: str, rng: np.random.Generator) -> float:
        return self.median_s(adapter) * float(np.exp(self.sigma_log * rng.standard_normal()))

    @classmethod
    def from_ranks(cls, ranks: Mapping[str, int], latency_weight_per_s: float) -> PagingCostModel:
        """Fake adapters of these LoRA ranks (:class:`FakeAdapterSpec`'s other defaults)."""
        mib = {a: FakeAdapterSpec(a, rank=int(r)).nbytes / 2**20 for a, r in ranks.items()}
        return cls(adapter_mib=mib, latency_weight_per_s=latency_weight_per_s)

    @classmethod
    def from_measured(
        cls, load_s: Mapping[str, float], latency_weight_per_s: float, sigma_log: float
    ) -> PagingCostModel:
        """Build from measured median load seconds per adapter (e.g. by a replica)."""
        return cls(
            adapter_mib={a: s * 1e3 for a, s in load_s.items()},
            ms_per_mib=1.0,
            sigma_log=sigma_log,
            latency_weight_per_s=latency_weight_per_s,
        )
