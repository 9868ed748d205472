"""The demo on a real model: SmolLM2 and its LoRA adapters (``banditctl demo --backend hf``).

:func:`hf_demo_config` serves SmolLM2-135M-Instruct (``hf`` backend) with no adapter
and with each of ``adapters`` (made by ``banditctl adapters make``: each opens its
answers with its own keyword). Each user of :func:`run_hf_traffic` has a task, the
keyword they want answers to open with (an adapter's), asks through the official
``openai`` client with ``model: auto`` and ``stream: true``, and rates what was
generated: quality 1 if the answer opens with their keyword, else 0, posted through
``POST /v1/feedback``. So the feedback is about real generations, and the learner
learns which adapter serves which task.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from controlplane.config import BanditConfig, parse_config

TOPICS = ("the sea", "a garden", "old trains", "the moon", "rainy days", "coffee", "chess")
BASE = "smol"


def find_adapters(folder: Path, n: int) -> list[tuple[str, str]]:
    """(name, keyword) of the first ``n`` adapters made by ``adapters make`` in ``folder``."""
    found = []
    for path in sorted(folder.glob("*/banditctl-adapter.json")):
        meta = json.loads(path.read_text())
        found.append((str(meta["name"]), str(meta["keyword"])))
    return found[:n]


def hf_demo_config(adapter_dir: Path, adapters: list[tuple[str, str]], **overrides: Any) -> BanditConfig:  # fmt: skip
    """SmolLM2 without an adapter and with each of ``adapters``; one task per keyword."""
    arm = {"model": BASE, "backend": "hf", "adapter_dir": str(adapter_dir), "max_new_tokens": 12}
    data: dict[str, Any] = {
        "arms": [{"name": BASE, **arm}]
        + [{"name": f"{BASE}:{name}", "adapter": name, **arm} for name, _ in adapters],
        "learner": {"kind": "linucb", "alpha": 0.3},
        "featurizer": {"dim": 32, "tasks": [k.lower() for _, k in adapters]},
        "objective": {"weights": {"quality": 1.0}, "feedback_window_s": 60.0},
        "cache": {"policy": "lru", "slots_per_replica": len(adapters)},
        "learner_service": {
            "poll_interval_s": 0.1,
            "snapshot_every_events": 4,
            "snapshot_every_s": 0.5,
            "snapshot_min_change": 0.0,
            "min_snapshot_interval_s": 0.5,
        },
        "gateway": {"policy_refresh_s": 0.25},
        "auth": {"open_chat": True, "open_dashboard": True},
    }
    data.update(overrides)
    return parse_config(data, "<demo hf>")


@dataclass
class Answer:
    task: str  # the keyword the user wants, lower case
    arm: str
    policy_version: int
    text: str
    ttft_ms: float
    tokens: int
    seconds: float  # first token to last
    quality: float


@dataclass
class HfTraffic:
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def opens_with(text: str, keyword: str) -> bool:
    return text.strip().lower().startswith(keyword.lower())


def run_hf_traffic(
    api_url: str,
    keywords: list[str],
    n: int,
    *,
    seed: int = 0,
    concurrency: int = 2,
    progress: Any = None,
) -> HfTraffic:
    """``n`` streamed chats, each user rating the answer on its opening keyword."""
    from controlplane.cli.demo import require_openai

    openai = require_openai()
    rng = np.random.default_rng(seed)
    tasks = [keywords[int(k)] for k in rng.integers(0, len(keywords), size=n)]
    topics = [TOPICS[int(k)] for k in rng.integers(0, len(TOPICS), size=n)]
    client = openai.OpenAI(base_url=api_url, api_key="demo", max_retries=2, timeout=300)
    http = httpx.Client(base_url=api_url, timeout=30)
    result = HfTraffic()
    lock = threading.Lock()
    start = time.perf_counter()

    def one(j: int) -> None:
        keyword = tasks[j]
        try:
            sent = time.perf_counter()
            first: float | None = None
            parts: list[str] = []
            meta: dict[str, Any] = {}
            usage: Any = None
            stream = client.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": f"Tell me about {topics[j]}."}],
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"metadata": {"task": keyword.lower()}},
            )
            for chunk in stream:
                meta = (chunk.model_extra or {}).get("banditctl") or meta
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        first = first or time.perf_counter()
                        parts.append(choice.delta.content)
            end = time.perf_counter()
            text = "".join(parts)
            quality = 1.0 if opens_with(text, keyword) else 0.0
            http.post(
                "/feedback",
                json={
                    "request_id": meta["request_id"],
                    "quality": quality,
                    "source": "demo-user",
                    "feedback_token": meta["feedback_token"],
                },
            ).raise_for_status()
            first = first or end
            answer = Answer(
                keyword.lower(), str(meta["arm"]), int(meta["policy_version"]), text,
                (first - sent) * 1000.0, int(usage.completion_tokens) if usage else len(parts),
                end - first, quality,
            )  # fmt: skip
            with lock:
                result.answers.append(answer)
        except Exception as exc:  # reported in the summary, never silently dropped
            with lock:
                result.errors.append(f"request {j}: {exc!r}"[:300])
        if progress is not None:
            progress.update(1)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(n)))
    result.seconds = time.perf_counter() - start
    http.close()
    return result


def summarize_hf(traffic: HfTraffic) -> dict[str, Any]:
    """TTFT, tokens/s, the share of answers in the asked-for keyword per half, and where
    each task went in the second half."""
    answers = traffic.answers
    if not answers:
        return {"served": 0}
    half = len(answers) // 2
    ttft = [a.ttft_ms for a in answers]
    decode = sum(a.seconds for a in answers)
    by_task: dict[str, list[str]] = defaultdict(list)
    for a in answers[half:]:
        by_task[a.task].append(a.arm)
    sample = next((a for a in answers[half:] if a.quality > 0), answers[-1])
    return {
        "served": len(answers),
        "ttft_ms_p50": statistics.median(ttft),
        "ttft_ms_max": max(ttft),
        "tokens_per_s": sum(max(a.tokens - 1, 0) for a in answers) / decode if decode else None,
        "quality_first_half": float(np.mean([a.quality for a in answers[:half]])) if half else None,
        "quality_second_half": float(np.mean([a.quality for a in answers[half:]])),
        "policy_versions_seen": sorted({a.policy_version for a in answers}),
        "arms_by_task_second_half": {
            t: {arm: arms.count(arm) / len(arms) for arm in sorted(set(arms))}
            for t, arms in sorted(by_task.items())
        },
        "sample": {
            "task": sample.task,
            "arm": sample.arm,
            "text": sample.text,
            "ttft_ms": round(sample.ttft_ms, 1),
        },
    }


def print_hf_summary(report: dict[str, Any]) -> None:
    s = report["summary"]
    print(
        f"\nrequests {report['requests']}  served {report['served']}  errors {report['errors']}  "
        f"in {report['seconds']} s; policy versions {report['policy_versions']}"
    )
    if not s.get("served"):
        return
    print(
        f"time to first token: median {s['ttft_ms_p50']:.0f} ms (max {s['ttft_ms_max']:.0f} ms); "
        f"{s['tokens_per_s']:.1f} tokens/s after it"
    )
    first = s["quality_first_half"]
    print(
        "answers opening with the asked-for keyword: "
        + (f"first half {first:.0%}, " if first is not None else "")
        + f"second half {s['quality_second_half']:.0%}; policy versions served: "
        + ", ".join(str(v) for v in s["policy_versions_seen"])
    )
    from controlplane.cli.demo import wait_line

    line = wait_line(report.get("feedback_waits"))
    if line:
        print(line)
    print("second half, per task:")
    for task, arms in s["arms_by_task_second_half"].items():
        print(f"  {task:<10} " + ", ".join(f"{a} {v:.0%}" for a, v in arms.items()))
    ex = s["sample"]
    print(f"one answer ({ex['task']}, {ex['arm']}, first token after {ex['ttft_ms']} ms):")
    print(f"  {ex['text']!r}")
