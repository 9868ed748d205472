"""How the Serve gateway calls an arm's pool, without Ray: one handle per arm and call
kind, made once and kept, over the transport ``gateway.pool_transport`` names, with the
arm's adapter as the multiplexed model id; and the Ray Serve in use still takes every
option the gateway sets."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import ValidationError

from controlplane.cli.demo import demo_config
from controlplane.config import BanditConfig, GatewayConfig
from deployments.gateway import Gateway


class _Handle:
    """What the gateway asks of a DeploymentHandle: ``options`` (counted)."""

    def __init__(self, model: str, options: dict[str, Any] | None = None) -> None:
        self.model = model
        self.given = options or {}
        self.made = 0

    def options(self, **kwargs: Any) -> _Handle:
        self.made += 1
        return _Handle(self.model, {**self.given, **kwargs})


def _gateway(cfg: BanditConfig) -> Any:
    """The deployment's class with what ``_handle`` reads, its pools faked."""
    gateway = object.__new__(Gateway.func_or_class)
    gateway.config = cfg
    gateway.pools = {m: _Handle(m) for m in {a.model for a in cfg.arms}}
    gateway.model_of = {a.name: a.model for a in cfg.arms}
    gateway.adapter_of = {a.name: a.adapter for a in cfg.arms}
    gateway._handles = {}
    return gateway


def _with_adapter(transport: str) -> BanditConfig:
    data = demo_config().model_dump(mode="json")
    data["arms"][0]["adapter"] = "sql-lora"
    data["gateway"]["pool_transport"] = transport
    return BanditConfig.model_validate(data)


@pytest.mark.parametrize(("transport", "by_reference"), [("grpc", False), ("ray", True)])
def test_each_arm_has_one_handle_per_call_kind_over_the_configured_transport(
    transport: str, by_reference: bool
) -> None:
    cfg = _with_adapter(transport)
    gateway = _gateway(cfg)
    adapted, plain = cfg.arms[0], cfg.arms[1]
    for arm in (adapted, plain):
        for stream in (False, True):
            first = gateway._handle(arm.name, stream)
            assert gateway._handle(arm.name, stream) is first  # kept, not made again
            assert first.model == arm.model
            assert first.given["_by_reference"] is by_reference
            assert first.given["stream"] is stream
            assert first.given["method_name"] == ("generate_stream" if stream else "generate")
            assert first.given.get("multiplexed_model_id") == arm.adapter
    assert "multiplexed_model_id" not in gateway._handle(plain.name, False).given
    # one options() a kind per arm: arms on one model each got their own two
    made = sum(h.made for h in gateway.pools.values())
    assert made == 4


def test_the_default_transport_is_grpc_and_another_is_refused() -> None:
    assert GatewayConfig().pool_transport == "grpc"
    with pytest.raises(ValidationError, match="pool_transport"):
        GatewayConfig(pool_transport="http")  # type: ignore[arg-type]


def test_ray_serve_takes_every_option_the_gateway_sets() -> None:
    from ray.serve.handle import DeploymentHandle

    taken = inspect.signature(DeploymentHandle.options).parameters
    for option in ("method_name", "stream", "_by_reference", "multiplexed_model_id"):
        assert option in taken, f"DeploymentHandle.options no longer takes {option}"
