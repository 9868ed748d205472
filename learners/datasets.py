"""Routing data sets for offline replay: a JSONL schema, a RouterBench CSV reader.

JSONL schema, one JSON object per line::

    {"prompt": "text" | [chat messages],   # required
     "task": "arc-challenge",              # optional task or domain label
     "models": {                           # required, one entry per model (arm)
        "gpt-4": {"quality": 0.9,          # required, in [0, 1]
                  "cost_usd": 0.0031,      # required, USD for this request
                  "latency_ms": 812.0,     # optional
                  "energy_j": 95.0,        # optional
                  "response": "..."}},     # optional, the model's answer
     "metadata": {"route": "...", "tenant": "..."}}   # optional

A row is kept only when every model has a quality and a cost ("complete rows").
Where latency or energy is absent, :data:`MODEL_PROFILES` supplies it (see
:func:`profile_latency_energy`) and :attr:`RoutingDataset.profiled` names the
components that came from the profile, so reports can say so.

RouterBench-style CSV folders (``routerbench_zs``) hold one file per task split
with a ``<model>`` quality column and a ``<model>|total_cost`` column per model;
:func:`read_routerbench` reads every ``*.csv`` (or a glob) as one stream.
"""

from __future__ import annotations

import ast
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Per-model serving profile used where a data set has no latency or energy:
# (parameters in billions, output tokens per second, joules per token).
# Figures are order-of-magnitude public estimates for hosted endpoints; a
# model not listed falls back to DEFAULT_PROFILE. They are a stand-in, not a
# measurement, and every report built on them says so.
MODEL_PROFILES: dict[str, tuple[float, float, float]] = {
    "WizardLM/WizardLM-13B-V1.2": (13, 60, 0.9),
    "claude-instant-v1": (20, 90, 1.2),
    "claude-v1": (52, 40, 3.0),
    "claude-v2": (70, 35, 3.8),
    "gpt-3.5-turbo-1106": (20, 80, 1.2),
    "gpt-4-1106-preview": (220, 30, 8.0),
    "meta/code-llama-instruct-34b-chat": (34, 45, 2.0),
    "meta/llama-2-70b-chat": (70, 35, 3.8),
    "mistralai/mistral-7b-chat": (7, 95, 0.5),
    "mistralai/mixtral-8x7b-chat": (47, 70, 1.4),
    "zero-one-ai/Yi-34B-Chat": (34, 45, 2.0),
    # the four models of the bundled synthetic scenario (learners.replay.synthetic)
    "small": (1, 120, 0.2),
    "coder": (7, 80, 0.6),
    "mathy": (7, 80, 0.6),
    "large": (70, 35, 3.8),
}
DEFAULT_PROFILE: tuple[float, float, float] = (30, 50, 2.0)
TIME_TO_FIRST_TOKEN_MS = 250.0
DEFAULT_OUTPUT_TOKENS = 128
CHARS_PER_TOKEN = 4.0


@dataclass
class RoutingDataset:
    """Full-information routing data: every model's outcome on every prompt."""

    requests: list[dict[str, Any]]  # OpenAI chat bodies, with "task" when known
    tasks: np.ndarray  # (n,) str
    models: tuple[str, ...]
    quality: np.ndarray  # (n, K)
    cost_usd: np.ndarray  # (n, K)
    latency_ms: np.ndarray  # (n, K)
    energy_j: np.ndarray  # (n, K)
    profiled: tuple[str, ...] = ()  # components taken from MODEL_PROFILES
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.requests)

    def rewards(self) -> np.ndarray:
        """(n, K, 4) reward vectors ordered as ``REWARD_COMPONENTS``."""
        return np.stack([self.quality, self.energy_j, self.latency_ms, self.cost_usd], axis=-1)

    def subset(self, idx: np.ndarray) -> RoutingDataset:
        return RoutingDataset(
            [self.requests[i] for i in idx],
            self.tasks[idx],
            self.models,
            self.quality[idx],
            self.cost_usd[idx],
            self.latency_ms[idx],
            self.energy_j[idx],
            self.profiled,
            self.source,
            list(self.notes),
        )


def profile_latency_energy(
    models: Sequence[str], prompt_chars: np.ndarray, response_chars: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Latency (ms) and energy (J) per (prompt, model) from :data:`MODEL_PROFILES`.

    tokens_in = chars / 4; tokens_out = response chars / 4 (128 when unknown);
    latency = 250 ms + tokens_out / tokens_per_s; energy = J/token x (in + out).
    """
    prof = np.array([MODEL_PROFILES.get(m, DEFAULT_PROFILE) for m in models])
    tok_in = np.asarray(prompt_chars, dtype=float)[:, None] / CHARS_PER_TOKEN
    if response_chars is None:
        tok_out = np.full((len(tok_in), len(models)), float(DEFAULT_OUTPUT_TOKENS))
    else:
        tok_out = np.maximum(np.asarray(response_chars, dtype=float) / CHARS_PER_TOKEN, 1.0)
    latency = TIME_TO_FIRST_TOKEN_MS + 1000.0 * tok_out / prof[None, :, 1]
    energy = prof[None, :, 2] * (tok_in + tok_out)
    return latency, energy


def chat_request(prompt: Any, task: str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A chat request body for one data-set prompt (a string, lines, or chat messages)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        messages = prompt
    else:
        text = "\n".join(prompt) if isinstance(prompt, list) else str(prompt)
        messages = [{"role": "user", "content": text}]
    req: dict[str, Any] = {"model": "auto", "messages": messages}
    if task:
        req["task"] = task
    if metadata:
        req["metadata"] = dict(metadata)
    return req


def _prompt_chars(req: dict[str, Any]) -> int:
    return sum(len(str(m.get("content", ""))) for m in req["messages"])


def build_dataset(
    requests: list[dict[str, Any]],
    tasks: list[str],
    models: tuple[str, ...],
    quality: list[list[float]],
    cost: list[list[float]],
    latency: list[list[float]] | None,
    energy: list[list[float]] | None,
    response_chars: list[list[float]] | None,
    source: str,
) -> RoutingDataset:
    """A :class:`RoutingDataset` from per-row requests and per-row x per-model figures;
    latency and energy missing from the source come from the models' profiles."""
    if not requests:
        raise ValueError(f"no complete rows in {source}")
    q = np.asarray(quality, dtype=float)
    c = np.asarray(cost, dtype=float)
    chars = np.array([_prompt_chars(r) for r in requests], dtype=float)
    resp = np.asarray(response_chars, dtype=float) if response_chars is not None else None
    lat_p, en_p = profile_latency_energy(models, chars, resp)
    profiled: list[str] = []
    if latency is None:
        lat, profiled = lat_p, [*profiled, "latency_ms"]
    else:
        lat = np.asarray(latency, dtype=float)
    if energy is None:
        en, profiled = en_p, [*profiled, "energy_j"]
    else:
        en = np.asarray(energy, dtype=float)
    notes = []
    if profiled:
        notes.append(
            f"{' and '.join(profiled)} not in the data: derived from the per-model profile "
            "in learners.datasets.MODEL_PROFILES"
        )
    return RoutingDataset(
        requests, np.array(tasks), models, q, c, lat, en, tuple(profiled), source, notes
    )


def read_jsonl(path: str | Path) -> RoutingDataset:
    """Read the JSONL schema above; rows missing a model's quality or cost are dropped."""
    requests: list[dict[str, Any]] = []
    tasks: list[str] = []
    quality: list[list[float]] = []
    cost: list[list[float]] = []
    lat: list[list[float]] = []
    en: list[list[float]] = []
    resp: list[list[float]] = []
    models: tuple[str, ...] | None = None
    has_lat = has_en = True
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            per = row["models"]
            if models is None:
                models = tuple(per)
            if any(
                per.get(m, {}).get("quality") is None or per.get(m, {}).get("cost_usd") is None
                for m in models
            ):
                continue
            requests.append(chat_request(row["prompt"], row.get("task"), row.get("metadata")))
            tasks.append(str(row.get("task") or ""))
            quality.append([float(per[m]["quality"]) for m in models])
            cost.append([float(per[m]["cost_usd"]) for m in models])
            has_lat &= all("latency_ms" in per[m] for m in models)
            has_en &= all("energy_j" in per[m] for m in models)
            lat.append([float(per[m].get("latency_ms", np.nan)) for m in models])
            en.append([float(per[m].get("energy_j", np.nan)) for m in models])
            resp.append([len(str(per[m].get("response", ""))) or np.nan for m in models])
    r = np.asarray(resp, dtype=float)
    r = np.where(np.isnan(r), DEFAULT_OUTPUT_TOKENS * CHARS_PER_TOKEN, r)
    return build_dataset(
        requests, tasks, models or (), quality, cost,
        lat if has_lat else None, en if has_en else None, r.tolist(), str(path),
    )  # fmt: skip


def _csv_files(path: Path, pattern: str) -> list[Path]:
    files = sorted(path.glob(pattern)) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no files matching {pattern} in {path}")
    return files


def _parse_list(text: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return [text]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def read_routerbench(path: str | Path, pattern: str = "*.csv") -> RoutingDataset:
    """Read a RouterBench-style CSV folder (or one file) as one stream of complete rows."""
    csv.field_size_limit(sys.maxsize)
    path = Path(path)
    requests: list[dict[str, Any]] = []
    tasks: list[str] = []
    quality: list[list[float]] = []
    cost: list[list[float]] = []
    resp: list[list[float]] = []
    models: tuple[str, ...] | None = None
    for file in _csv_files(path, pattern):
        with open(file, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            file_models = tuple(c for c in cols if f"{c}|total_cost" in cols)
            if models is None:
                models = file_models
            elif set(file_models) != set(models):
                raise ValueError(f"{file.name}: models differ from the first file")
            for row in reader:
                if any(
                    row[m] in ("", None) or row[f"{m}|total_cost"] in ("", None) for m in models
                ):
                    continue
                task = row.get("eval_name") or file.stem
                requests.append(chat_request(_parse_list(row["prompt"]), task, None))
                tasks.append(task)
                quality.append([float(row[m]) for m in models])
                cost.append([float(row[f"{m}|total_cost"]) for m in models])
                resp.append(
                    [
                        sum(map(len, _parse_list(row.get(f"{m}|model_response") or "")))
                        for m in models
                    ]
                )
    return build_dataset(requests, tasks, models or (), quality, cost, None, None, resp, str(path))


def load_dataset(path: str | Path, pattern: str = "*.csv") -> RoutingDataset:
    """A ``.jsonl`` file, or a RouterBench CSV file or folder."""
    p = Path(path)
    if p.suffix == ".jsonl":
        return read_jsonl(p)
    return read_routerbench(p, pattern)
