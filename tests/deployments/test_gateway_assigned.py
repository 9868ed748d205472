"""The Serve gateway's bound on a pool call's assignment (``gateway.pool_wait_s``),
without Ray: a call no replica takes fails with PoolUnavailable and is cancelled; one
that is assigned goes on; the client leaving is a cancellation, not a pool fault."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.gateway_core import PoolUnavailable
from deployments.gateway import assigned


class _Response:
    """What the gateway reads of a DeploymentResponse: the assignment's future."""

    def __init__(self, assign_after_s: float | None) -> None:
        self.assign_after_s = assign_after_s  # None: no replica ever takes it
        self.cancelled = 0
        self.fetch_cancelled = False

    async def _fetch_future_result_async(self) -> str:
        try:
            if self.assign_after_s is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.assign_after_s or 0)
        except asyncio.CancelledError:
            self.fetch_cancelled = True
            raise
        return "replica"

    def cancel(self) -> None:
        self.cancelled += 1


def test_a_call_no_replica_takes_fails_within_the_bound_and_is_cancelled():
    response = _Response(None)
    with pytest.raises(PoolUnavailable, match="no replica of big's pool took the call in 0.05 s"):
        asyncio.run(assigned("big", response, 0.05))
    assert response.cancelled == 1 and response.fetch_cancelled


def test_an_assigned_call_goes_on():
    for after in (0.0, 0.01):
        response = _Response(after)
        asyncio.run(assigned("big", response, 5.0))
        assert response.cancelled == 0 and not response.fetch_cancelled


def test_a_response_without_the_assignment_future_is_not_bounded():
    asyncio.run(assigned("big", object(), 0.0))


def test_the_client_leaving_cancels_the_wait_and_is_no_pool_fault():
    response = _Response(None)

    async def main() -> None:
        task = asyncio.create_task(assigned("big", response, 60.0))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert response.fetch_cancelled and response.cancelled == 0
