"""OpenTelemetry spans of the request path, exported only where configured.

A gateway request is one ``banditctl.request`` span (attributes: arm, route,
policy version, propensity, request id) with the children
``banditctl.featurize``, ``banditctl.select``, ``banditctl.pool_call`` and
``banditctl.log`` (one per record enqueued: decision, then outcome).

Only ``opentelemetry-api`` is a dependency. Until a tracer provider is set
(:func:`configure_tracing` sets one from the standard environment variables
when the ``otel`` extra is installed), :class:`RequestTracer` hands out no
tracer at all and the request path skips its spans: the API's no-op spans, and
even asking the API for its provider, cost microseconds each, which a decision
of a tenth of a millisecond would notice.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, Tracer

log = logging.getLogger(__name__)

TRACER_NAME = "banditctl.gateway"
_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


class RequestTracer:
    """The tracer for the request path: the one given, else the global provider's if one
    is set, else None (no spans). The global provider is looked up when this is made and
    on :meth:`refresh` (the gateway's policy refresher calls it), never per request."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer
        if tracer is None:
            self.refresh()

    def refresh(self) -> None:
        """Take the global provider's tracer if one was set since (once found, kept)."""
        if self._tracer is not None:
            return
        provider = trace.get_tracer_provider()
        if not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
            self._tracer = provider.get_tracer(TRACER_NAME)

    def current(self) -> Tracer | None:
        return self._tracer


def span(tracer: Tracer | None, name: str) -> AbstractContextManager[Span | None]:
    """A child of the current span, or a shared no-op context (yielding None) without tracer."""
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name)


def set_attributes(target: Span | None, attributes: Mapping[str, Any]) -> None:
    if target is not None and target.is_recording():
        target.set_attributes(attributes)


def configure_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Install an SDK tracer provider when the environment asks for traces.

    Standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, several
    comma-separated, or ``none``) and ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (an endpoint alone means ``otlp``, over
    HTTP/protobuf); ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name
    the resource. Neither set: nothing is installed, and nothing is exported.
    Returns whether a provider was installed (never twice in a process).
    """
    env = os.environ if env is None else env
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names and endpoint:
        names = ["otlp"]
    names = [n for n in names if n != "none"]
    if not names or not isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning("traces asked for, but the SDK is missing: pip install 'banditctl[otel]'")
        return False
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning("OTLP traces need the exporter: pip install 'banditctl[otel]'")
                continue
            exporters.append(OTLPSpanExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (otlp, console, none)", name)
    if not exporters:
        return False
    named = env.get("OTEL_SERVICE_NAME")  # the SDK's resource detector reads it
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": service_name})
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("exporting traces to %s", ", ".join(names))
    return True
