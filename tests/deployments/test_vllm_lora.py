"""An ``openai`` arm whose upstream is a vLLM server with runtime LoRA updating: the
pool's slots (and POLAR's plans) load and unload adapters on the server through
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``; tested against a real
HTTP fake of those endpoints and the chat API (``tests/fakes/vllm_server.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cache_manager.executor import CapacityError
from controlplane.config import parse_config
from deployments.backends import AdapterNotLoaded, BuildContext, build_backends, collect
from deployments.backends.vllm_lora import LoRAAdminError, VLLMLoRA
from deployments.pool import PoolCore
from tests.fakes.vllm_server import FakeVLLM

ADAPTERS = ["sql", "chat", "code"]
DIR = "/srv/loras"
LOAD_S = 0.05


@pytest.fixture
def server():
    with FakeVLLM("base-7b", {f"{DIR}/{a}": a for a in ADAPTERS}, load_s=LOAD_S) as fake:
        yield fake


def test_loads_and_unloads_on_the_server_and_times_the_load(server):
    lora = VLLMLoRA(server.base_url + "/v1/", DIR + "/")  # the API's url, or the root
    seconds = lora.load("sql")
    assert seconds >= LOAD_S  # the server's own load time, measured around the call
    assert server.loaded == {"sql": f"{DIR}/sql"} and lora.listed() == ("sql",)
    assert lora.load("sql") == 0.0 and server.history == [("load", "sql")]  # held: no call
    # loaded by someone else (the server's start-up --lora-modules): 400, taken as held
    other = VLLMLoRA(server.base_url, DIR)
    assert other.load("sql") == 0.0 and other.resident() == ("sql",)
    lora.unload("sql")
    assert server.loaded == {} and lora.resident() == () and lora.listed() == ()
    lora.unload("sql")  # 404 "cannot be found": already gone, not an error
    with pytest.raises(LoRAAdminError, match="404.*No adapter found"):
        lora.load("missing")
    assert lora.resident() == ()


def _config(policy: str, slots: int, adapter_dir: str | None, base_url: str):
    arm = {"model": "base-7b", "backend": "openai", "base_url": base_url + "/v1"}
    if adapter_dir is not None:
        arm["adapter_dir"] = adapter_dir
    return parse_config(
        {
            "arms": [{"name": f"base-7b:{a}", "adapter": a, **arm} for a in ADAPTERS],
            "cache": {"policy": policy, "slots_per_replica": slots},
        }
    )


def _pool(config) -> PoolCore:
    context = BuildContext(config, adapter_rank=8, data_dir=Path("."))
    return PoolCore(config, "base-7b", build_backends(config.arms, context))


def test_polar_plans_drive_the_servers_adapter_slots(server):
    config = _config("polar", 2, DIR, server.base_url)
    core = _pool(config)

    async def run() -> None:
        assert await core.slots.prefetch("sql") >= LOAD_S
        assert await core.slots.prefetch("chat") >= LOAD_S
        assert set(server.loaded) == {"sql", "chat"}
        gen = await core.generate("base-7b:sql", {"messages": [{"role": "user", "content": "q"}]})
        assert gen["text"] == "sql says hello" and gen["completion_tokens"] == 3
        assert server.chats[-1]["model"] == "sql"  # the adapter is the upstream's model
        # the plan is full: code is served by a one-off load, unloaded after its request
        gen = await core.generate("base-7b:code", {"messages": [{"role": "user", "content": "q"}]})
        assert gen["text"] == "code says hello"
        assert set(server.loaded) == {"sql", "chat"}
        assert server.history[-2:] == [("load", "code"), ("unload", "code")]
        with pytest.raises(CapacityError):
            await core.slots.prefetch("code")
        await core.slots.evict("chat")
        assert set(server.loaded) == {"sql"}
        stats = core.residency_stats()
        assert stats["page_ins"] == 3 and stats["adapter_loads"]["code"]["loads"] == 1
        assert stats["adapter_loads"]["sql"]["median_ms"] >= LOAD_S * 1000

    asyncio.run(run())
    assert server.max_loaded <= 2 + 1  # the slots, plus the one-off scratch slot


def test_without_adapter_dir_the_server_is_assumed_to_hold_every_adapter(server):
    config = _config("lru", 2, None, server.base_url)
    backend = build_backends(config.arms, BuildContext(config, 8, Path(".")))
    up = backend["base-7b:sql"]
    assert up.load_adapter("sql") == 0.0 and server.history == []  # bookkeeping only

    async def run() -> None:
        with pytest.raises(AdapterNotLoaded):
            await collect(backend["base-7b:chat"].generate({"messages": []}, "chat"))

    asyncio.run(run())
