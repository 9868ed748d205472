"""Fixtures for the model tests: torch on one thread.

These machines have two cores that the rest of the suite (PostgreSQL, Ray) also
uses; torch's two intra-op threads then wait on each other for seconds per
step, while one thread keeps a step predictable.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def torch_one_thread() -> None:
    import torch

    torch.set_num_threads(1)
