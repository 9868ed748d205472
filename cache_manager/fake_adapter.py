"""Fake LoRA adapters whose load does the real work of a load: allocate and copy.

A LoRA adapter of rank ``r`` on a model with hidden size ``h``, ``L`` layers and
``m`` target modules per layer holds ``2 * r * h * L * m`` weights (the A and B
factors). Loading one onto a replica means allocating that much memory and
copying the weights in from a host copy (disk page cache or pinned memory). This
module does exactly that with numpy and sleeps nothing, so a load takes the time
the machine needs to move the bytes.

The store keeps one host copy per adapter; :meth:`FakeAdapterStore.load` returns a
fresh :class:`LoadedAdapter` and the seconds the load took. The Ray Serve replicas
use the same store, and ``bench/bench_adapter_load.py`` measures it to calibrate
:mod:`cache_manager.paging`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FakeAdapterSpec:
    """Shape of one LoRA adapter (defaults: a 7B-class model, q/k/v/o targets)."""

    name: str
    rank: int = 16
    hidden: int = 4096
    layers: int = 32
    target_modules: int = 4
    dtype: str = "float16"

    def __post_init__(self) -> None:
        for label in ("rank", "hidden", "layers", "target_modules"):
            if getattr(self, label) <= 0:
                raise ValueError(f"{label} must be positive")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        # (layers, modules, factor A|B, rank, hidden)
        return (self.layers, self.target_modules, 2, self.rank, self.hidden)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass
class LoadedAdapter:
    """An adapter resident in replica memory."""

    spec: FakeAdapterSpec
    weights: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.weights.nbytes)


@dataclass
class FakeAdapterStore:
    """Host copies of fake adapters; ``load`` copies one into fresh memory."""

    specs: dict[str, FakeAdapterSpec]
    rng: np.random.Generator
    timer: Callable[[], float] = time.perf_counter
    _host: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def host_copy(self, name: str) -> np.ndarray:
        """The adapter's weights on the host, created on first use."""
        if name not in self._host:
            spec = self.specs[name]
            raw = self.rng.bytes(spec.nbytes)
            self._host[name] = (
                np.frombuffer(raw, dtype=np.uint8).view(spec.dtype).reshape(spec.shape)
            )
        return self._host[name]

    def load(self, name: str) -> tuple[LoadedAdapter, float]:
        """Allocate and copy the adapter in; returns it and the seconds it took."""
        source = self.host_copy(name)
        start = self.timer()
        weights = np.empty_like(source)
        np.copyto(weights, source)
        elapsed = self.timer() - start
        return LoadedAdapter(self.specs[name], weights), elapsed
