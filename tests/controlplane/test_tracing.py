"""OpenTelemetry spans of one request through GatewayCore (SDK in-memory exporter, a stub
pool, a real database for nothing but the core's engine), and the no-tracer default."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from controlplane.gateway_core import GatewayCore, UpstreamError
from controlplane.tokens import FeedbackTokens
from controlplane.tracing import RequestTracer, configure_tracing
from tests.controlplane.learning import learning_config

BODY = {"model": "auto", "messages": [{"role": "user", "content": "Write a sort in Python"}]}


async def stub_pool(arm: str, body: dict) -> dict:
    if body.get("metadata", {}).get("fail"):
        raise RuntimeError("upstream down")
    return {"text": f"[{arm}] ok", "prompt_tokens": 5, "completion_tokens": 7,
            "energy_j": 2.0, "cost_usd": 0.001}  # fmt: skip


@pytest.fixture
def traced(engine):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    core = GatewayCore(
        learning_config(), engine, stub_pool, FeedbackTokens("unit-secret-0123456789", 60),
        tracer=provider.get_tracer("test"),
    )  # fmt: skip
    yield core, exporter
    core.writer.close()
    provider.shutdown()


def test_one_request_is_one_trace_with_its_steps(traced):
    core, exporter = traced
    answer = asyncio.run(core.complete(dict(BODY)))
    meta = answer["banditctl"]
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    assert sorted(by_name) == ["banditctl.featurize", "banditctl.log", "banditctl.pool_call",
                               "banditctl.request", "banditctl.select"]  # fmt: skip
    (root,) = by_name["banditctl.request"]
    assert root.parent is None
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    children = [s for s in spans if s is not root]
    assert all(s.parent.span_id == root.context.span_id for s in children)
    assert root.attributes == {
        "banditctl.request_id": meta["request_id"],
        "banditctl.arm": meta["arm"],
        "banditctl.route": "auto",
        "banditctl.policy_version": 0,
        "banditctl.propensity": pytest.approx(meta["propensity"]),
    }
    assert [s.attributes["banditctl.record"] for s in by_name["banditctl.log"]] == [
        "decision",
        "outcome",
    ]
    order = [s.name for s in sorted(children, key=lambda s: s.start_time)]
    assert order == ["banditctl.featurize", "banditctl.select", "banditctl.log",
                     "banditctl.pool_call", "banditctl.log"]  # fmt: skip
    assert root.status.status_code == StatusCode.UNSET


def test_a_failed_request_is_traced_as_an_error_with_its_arm(traced):
    core, exporter = traced
    with pytest.raises(UpstreamError):
        asyncio.run(core.complete({**BODY, "metadata": {"fail": True}}))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root, call = spans["banditctl.request"], spans["banditctl.pool_call"]
    assert root.status.status_code == call.status.status_code == StatusCode.ERROR
    assert root.attributes["banditctl.arm"] in {a.name for a in core.config.arms}
    assert [e.name for e in call.events] == ["exception"]


def test_without_a_tracer_provider_no_span_is_made():
    # nothing in the test process sets a global provider: the request path skips spans
    assert RequestTracer().current() is None
    assert configure_tracing("banditctl-gateway", env={}) is False
    assert configure_tracing("x", env={"OTEL_TRACES_EXPORTER": "none"}) is False


def test_the_environment_turns_export_on():
    """``OTEL_TRACES_EXPORTER`` installs the SDK's provider, which the request path uses
    from its next refresh (in a fresh interpreter: a global provider is set once per
    process)."""
    code = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from controlplane.tracing import RequestTracer, configure_tracing, span
        tracing = RequestTracer()
        assert tracing.current() is None
        assert configure_tracing("banditctl-gateway")
        assert isinstance(trace.get_tracer_provider(), TracerProvider)
        assert tracing.current() is None  # until the gateway's refresher looks again
        tracing.refresh()
        with span(tracing.current(), "banditctl.request") as s:
            assert s.is_recording()
        trace.get_tracer_provider().shutdown()
        """
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "unit"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '"name": "banditctl.request"' in out.stdout and '"service.name": "unit"' in out.stdout
