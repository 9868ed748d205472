"""A vLLM server's LoRA adapter slots, driven through its runtime LoRA API.

vLLM (started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``)
loads an adapter on ``POST /v1/load_lora_adapter`` (``{"lora_name", "lora_path"}``,
a path on the server's file system) and drops it on ``POST /v1/unload_lora_adapter``
(``{"lora_name"}``); a loaded adapter is then served under its name as the chat
request's ``model`` and listed by ``GET /v1/models`` with its ``parent`` model.

:class:`VLLMLoRA` is what an ``openai`` arm with ``adapter_dir`` uses, so that the
pool's slots (and POLAR's plans) decide what the server holds, and the page-in cost
priced is the load time the server took (measured around the call). Calls are
blocking (the pool runs loads and unloads in worker threads).

vLLM keeps at most ``--max-loras`` adapters on the GPU (an LRU over the ones
registered); set the pool's ``cache.slots_per_replica`` to at most that, so that
what the plan keeps is what stays on the GPU. An unload takes the name out of
service; the engine frees its GPU slot when its LRU needs one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import httpx


class LoRAAdminError(RuntimeError):
    """The server refused or failed an adapter load or unload (its message kept)."""


class VLLMLoRA:
    def __init__(
        self,
        base_url: str,
        adapter_dir: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 120.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.adapter_dir = adapter_dir.rstrip("/")
        root = base_url.rstrip("/")
        root = root.removesuffix("/v1")  # an arm's base_url is the API's (…/v1)
        self.client = client or httpx.Client(
            base_url=root, headers=dict(headers or {}), timeout=timeout_s
        )
        self.loaded: dict[str, float] = {}  # adapter -> seconds its load took

    def path_of(self, name: str) -> str:
        """Where the server reads ``name`` from: ``<adapter_dir>/<name>``."""
        return f"{self.adapter_dir}/{name}"

    def load(self, name: str) -> float:
        """Load ``name`` on the server; returns the seconds the call took (0.0 when it
        was loaded already, by us or by the server's own start-up ``--lora-modules``)."""
        if name in self.loaded:
            return 0.0
        start = time.perf_counter()
        r = self.client.post(
            "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": self.path_of(name)}
        )
        seconds = time.perf_counter() - start
        if r.status_code == 400 and "already been loaded" in r.text:
            self.loaded[name] = 0.0
            return 0.0
        if r.is_error:
            raise LoRAAdminError(f"load_lora_adapter {name!r}: HTTP {r.status_code}: {r.text}")
        self.loaded[name] = seconds
        return seconds

    def unload(self, name: str) -> None:
        """Unload ``name`` from the server (a name it does not hold is not an error)."""
        self.loaded.pop(name, None)
        r = self.client.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if r.is_error and r.status_code != 404:  # 404: "cannot be found", not held
            raise LoRAAdminError(f"unload_lora_adapter {name!r}: HTTP {r.status_code}: {r.text}")

    def listed(self) -> tuple[str, ...]:
        """The adapters the server lists now (models with a ``parent``)."""
        r = self.client.get("/v1/models")
        r.raise_for_status()
        return tuple(m["id"] for m in r.json().get("data", []) if m.get("parent"))

    def resident(self) -> tuple[str, ...]:
        return tuple(self.loaded)

    def close(self) -> None:
        self.client.close()
