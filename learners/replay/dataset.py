"""The routing data set a replay config names: "synthetic" or a path.

Used by the replay backend's pools and by the demo's scenario, so both see the
same rows.
"""

from __future__ import annotations

from functools import lru_cache

from learners.datasets import RoutingDataset, load_dataset


@lru_cache(maxsize=4)
def dataset_for(spec: str, rows: int, seed: int) -> RoutingDataset:
    """``spec``: "synthetic" or a path. Cached per process."""
    if spec == "synthetic":
        from learners.replay.synthetic import synthetic_dataset

        return synthetic_dataset(rows, seed)
    return load_dataset(spec)
