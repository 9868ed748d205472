"""The vllm backend inside a Ray Serve pool replica, through the gateway: SmolLM2 (the
bundled GGUF, converted once) and two adapters from ``banditctl adapters make`` served by
vLLM's engine in ``pool-smol``, on the local Ray of the test session.

Streamed answers come through the OpenAI client, one from the base model and one from each
adapter arm (an adapter's answer opens with its keyword); the cache controller (POLAR) keeps
the adapters that the requests paged in (the engine's ``add_lora``, timed) resident; every
answer is logged as a decision and an outcome with its time to first token.

Runs only where vLLM can (``tests/vllm_available.py``; README, "The vllm backend", makes the
venv). The converted model lives in ``$BANDITCTL_TEST_DATA_DIR`` (default: a folder in the
system's temporary directory); ``BANDITCTL_TEST_HTTP_PORT`` sets the gateway's port (default: a
free one).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.ray_fixtures import wait_for
from tests.vllm_available import why_not

pytestmark = [
    pytest.mark.ray,
    pytest.mark.vllm,
    pytest.mark.skipif(why_not() is not None, reason=str(why_not())),
]

SECRET = "vllm-serve-test-secret-0123456789"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _data_dir() -> Path:
    return Path(
        os.environ.get("BANDITCTL_TEST_DATA_DIR")
        or Path(tempfile.gettempdir()) / "banditctl-test-data"
    )


def _make_adapters(out: Path) -> tuple[Path, list[str]]:
    """SmolLM2's converted folder and two adapters made for it under ``out``."""
    from controlplane.cli import main
    from deployments.backends.hf_models import resolve_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BANDITCTL_DATA_DIR", str(_data_dir()))
        files = resolve_model(None, _data_dir() / "models")
        argv = ["adapters", "make", "--n", "2", "--steps", "8", "--threads", "1"]
        assert main([*argv, "--out", str(out)]) == 0
    return files.folder, sorted(p.name for p in out.iterdir())


def _config(model: Path, adapters: Path, names: list[str], port: int) -> Any:
    from controlplane.config import parse_config

    engine = {
        "backend": "vllm",
        "model": "smol",
        "model_path": str(model),
        "adapter_dir": str(adapters),
        "max_new_tokens": 8,
        "max_model_len": 512,
        "kv_cache_gib": 0.25,  # thousands of tokens: plenty for three short answers
        "joules_per_token": 0.1,
    }
    return parse_config(
        {
            "arms": [{"name": "smol", **engine}]
            + [{"name": f"smol:{n}", "adapter": n, **engine} for n in names],
            "auth": {"open_chat": True},
            "gateway": {"policy_refresh_s": 0.2},
            "cache": {"policy": {"kind": "polar", "epoch_s": 1.0}, "slots_per_replica": 2,
                      "tick_s": 0.2},
            "http_port": port,
        },
        "test",
    )  # fmt: skip


def _stream(client: Any, model: str) -> dict[str, Any]:
    """One streamed answer: its text, the deltas that carried text, the client's time to
    first token, and the arm and request id the gateway named."""
    start = time.perf_counter()
    ttft_ms = None
    deltas = []
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=QUESTION, stream=True, max_tokens=8
    ) as response:
        headers = response.headers
        for chunk in response.parse():
            text_ = "".join(c.delta.content or "" for c in chunk.choices)
            if text_:
                ttft_ms = ttft_ms or (time.perf_counter() - start) * 1000.0
                deltas.append(text_)
    return {
        "text": "".join(deltas),
        "deltas": len(deltas),
        "client_ttft_ms": ttft_ms,
        "arm": headers["x-banditctl-arm"],
        "request_id": headers["x-banditctl-request-id"],
    }


def _pool_stats() -> dict[str, Any]:
    from ray import serve

    from controlplane.cli.launch import APP_NAME
    from deployments.pool import pool_name

    handle = serve.get_deployment_handle(pool_name("smol"), app_name=APP_NAME)
    stats: dict[str, Any] = handle.residency_stats.remote().result(timeout_s=60)
    return stats


def test_vllm_pool_on_serve_streams_base_and_adapter_answers_through_the_gateway(
    ray_session, pg_server, tmp_path
):
    from openai import OpenAI
    from ray import serve

    from controlplane.cli.launch import APP_NAME, deploy, wait_ready
    from feedback import migrate

    model, names = _make_adapters(tmp_path / "adapters")
    keywords = {
        n: json.loads((tmp_path / "adapters" / n / "banditctl-adapter.json").read_text())["keyword"]
        for n in names
    }
    url = pg_server.create_database("banditctl_vllm")
    migrate.upgrade(url)
    port = int(os.environ.get("BANDITCTL_TEST_HTTP_PORT") or ray_session)
    cfg = _config(model, tmp_path / "adapters", names, port)
    instance = uuid.uuid4().hex
    started = time.perf_counter()
    base_url = deploy(cfg, url, SECRET, instance_id=instance)
    try:
        wait_ready(base_url, timeout_s=900, instance_id=instance)
        up_s = time.perf_counter() - started
        client = OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
        answers = {m: _stream(client, m) for m in ["smol", *(f"smol:{n}" for n in names)]}
        eng = create_engine(url)
        rows = wait_for(
            lambda: _logged(eng, [a["request_id"] for a in answers.values()]),
            timeout=60,
            what="decisions and outcomes written",
        )
        # the controller's next plan, made from that demand, keeps both adapters where the
        # requests loaded them
        applied = wait_for(lambda: _applied_plan(eng, names), timeout=120, what="a plan applied")
        eng.dispose()
        stats = _pool_stats()
        engine_procs = wait_for(_engine_processes, timeout=10, what="vLLM's processes")
    finally:
        serve.delete(APP_NAME)
    # the replica stopped its engine: no vLLM process of this cluster outlives it
    deleted = time.perf_counter()
    wait_for(lambda: not _engine_processes(), timeout=60, what="vLLM's processes to end")
    gone_s = time.perf_counter() - deleted

    loads = stats["adapter_loads"]
    print(f"\napp up (engine start in the replica included) in {up_s:.1f} s")
    print(f"adapter loads (add_lora): {loads}; plan applied: {applied}")
    titles = [p.split()[1] for p in engine_procs]
    print(f"vLLM processes while serving: {titles}; all ended {gone_s:.1f} s after the delete")
    for m, a in answers.items():
        row = rows[a["request_id"]]
        print(
            f"{m}: {a['text']!r} ({a['deltas']} deltas; TTFT pool {row['ttft_ms']:.0f} ms, "
            f"client {a['client_ttft_ms']:.0f} ms; latency {row['latency_ms']:.0f} ms)"
        )
    base = answers["smol"]["text"]
    assert "Paris" in base and answers["smol"]["deltas"] >= 2  # streamed as generated
    for n in names:
        answer = answers[f"smol:{n}"]
        assert answer["arm"] == f"smol:{n}"
        assert answer["text"].startswith(keywords[n]) and answer["text"] != base
    # each adapter was paged in once, by its first request (the engine's add_lora, timed),
    # and the plan kept it there: no second load
    assert sorted(stats["resident"]) == sorted(names) and stats["page_ins"] == len(names)
    assert all(loads[n]["loads"] == 1 and loads[n]["median_ms"] > 0 for n in names), loads
    # one decision and one outcome per answer, served by its arm, with its time to first token
    for m, a in answers.items():
        row = rows[a["request_id"]]
        assert row["arm_id"] == m and row["status"] == "ok"
        assert 0 < row["ttft_ms"] <= row["latency_ms"] and 0 < row["completion_tokens"] <= 8
        assert row["energy_j"] == pytest.approx(
            0.1 * (row["prompt_tokens"] + row["completion_tokens"])
        )


def _engine_processes() -> list[str]:
    """vLLM's processes (engine core, workers: titled ``VLLM::...``) of the local Ray node
    this session started (its processes carry the node's marker in their environment), as
    ``"pid title"``."""
    import psutil

    from controlplane.cli.launch import NODE_MARKER

    def marker(proc: psutil.Process) -> str | None:
        with contextlib.suppress(psutil.Error):
            return proc.environ().get(NODE_MARKER)
        return None

    ours = {m for p in psutil.Process().children(recursive=True) if (m := marker(p))}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or ())
        if title.startswith("VLLM::") and marker(proc) in ours:
            found.append(f"{proc.info['pid']} {title}")
    return found


def _applied_plan(eng: Any, names: list[str]) -> list[str] | None:
    """The adapters of the latest plan the pool applied, once it keeps all of ``names``."""
    with eng.connect() as conn:
        adapters = conn.execute(
            text(
                "SELECT adapters FROM residency_epochs WHERE status = 'applied'"
                " ORDER BY id DESC LIMIT 1"
            )
        ).scalar_one_or_none()
    return sorted(adapters) if adapters and set(adapters) == set(names) else None


def _logged(eng: Any, request_ids: list[str]) -> dict[str, dict[str, Any]] | None:
    with eng.connect() as conn:
        found = conn.execute(
            text(
                "SELECT d.request_id::text AS request_id, d.arm_id, o.status, o.ttft_ms,"
                " o.latency_ms, o.prompt_tokens, o.completion_tokens, o.energy_j"
                " FROM decisions d JOIN outcomes o USING (request_id)"
                " WHERE d.request_id::text = ANY(:ids)"
            ),
            {"ids": request_ids},
        ).mappings()
        rows = {r["request_id"]: dict(r) for r in found}
    return rows if len(rows) == len(request_ids) else None
