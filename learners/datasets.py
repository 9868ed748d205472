"""Routing data sets for offline replay: a JSONL schema, a RouterBench CSV reader.

JSONL schema, one JSON object per line::

    {"prompt": "text" | [chat messages],   # required
     "task": "arc-challenge",              # optional task or domain label
     "models": {                           # required, one entry per model (arm)
        "gpt-4": {"quality": 0.9,          # required, in [0, 1]
                  "cost_usd": 0.0031,      # required (USD for this request, >= 0),
                                           # unless no row has one: then all are 0
                  "latency_ms": 812.0,     # optional
                  "energy_j": 95.0,        # optional
                  "response": "..."}},     # optional, the model's answer
     "metadata": {"route": "...", "tenant": "..."}}   # optional

A row is kept only when every model of the first row has a quality and a cost
("complete rows"); the others are counted in :attr:`RoutingDataset.notes`, and so
are models a later row adds (ignored). A line that breaks the schema raises
:class:`DatasetError` with its line number and field. :func:`load_dataset` tells
JSONL from CSV by content, not by the file name.
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

    def only_models(self, models: Sequence[str]) -> RoutingDataset:
        """The same rows with only ``models`` (kept in the data set's order); names outside
        it raise ``ValueError``."""
        wanted = list(dict.fromkeys(models))
        unknown = [m for m in wanted if m not in self.models]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} not among the data set's models ({', '.join(self.models)})"
            )
        if len(wanted) < 2:
            raise ValueError("at least two models are needed to route between")
        keep = [k for k, m in enumerate(self.models) if m in wanted]
        return RoutingDataset(
            self.requests,
            self.tasks,
            tuple(self.models[k] for k in keep),
            self.quality[:, keep],
            self.cost_usd[:, keep],
            self.latency_ms[:, keep],
            self.energy_j[:, keep],
            self.profiled,
            self.source,
            [*self.notes, f"only {len(keep)} of its {len(self.models)} models replayed (--models)"],
        )

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


class DatasetError(ValueError):
    """A data set that does not follow its schema: names the file, the line and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        where = str(path) + (f", line {line}" if line is not None else "")
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")
        self.path, self.line, self.field = str(path), line, field


def _number(value: Any, path: str | Path, line: int, field: str, unit: bool) -> float:
    """A float from a data-set field; ``unit``: it must lie in [0, 1] (a quality)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DatasetError(path, line, field, f"expected a number, got {value!r}")
    try:
        v = float(value)
    except ValueError:
        raise DatasetError(path, line, field, f"expected a number, got {value!r}") from None
    if not np.isfinite(v):
        raise DatasetError(path, line, field, f"expected a finite number, got {value!r}")
    if unit and not 0.0 <= v <= 1.0:
        raise DatasetError(path, line, field, f"quality must lie in [0, 1], got {v:g}")
    if not unit and v < 0:
        raise DatasetError(path, line, field, f"must not be negative, got {v:g}")
    return v


def _or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


class _RowCounts:
    """Rows kept, dropped as incomplete, and naming models outside the set, for the notes."""

    def __init__(self) -> None:
        self.read = 0
        self.incomplete = 0
        self.first_incomplete: str | None = None
        self.missing: dict[str, int] = {}
        self.extra: dict[str, int] = {}

    def drop(self, where: str, missing: list[str]) -> None:
        self.incomplete += 1
        self.first_incomplete = self.first_incomplete or where
        for m in missing:
            self.missing[m] = self.missing.get(m, 0) + 1

    def notes(self, models: tuple[str, ...], origin: str) -> list[str]:
        out = [f"{len(models)} models ({origin}): {', '.join(models)}"]
        if self.incomplete:
            worst = ", ".join(
                f"{m} {n}" for m, n in sorted(self.missing.items(), key=lambda kv: -kv[1])[:5]
            )
            out.append(
                f"{self.incomplete} of {self.read} rows dropped as incomplete (a model without "
                f"a quality or a cost; first at {self.first_incomplete}; rows missing each: {worst})"
            )
        if self.extra:
            names = ", ".join(f"{m} ({n} rows)" for m, n in sorted(self.extra.items()))
            out.append(f"models outside that set ignored: {names}")
        return out


def read_jsonl(path: str | Path) -> RoutingDataset:
    """Read the JSONL schema above.

    The model set is the first row's; a row without a model's quality or cost is
    dropped, and models a later row adds are ignored: both are counted in the
    data set's notes. A line that breaks the schema (not JSON, no prompt, a
    quality outside [0, 1], a negative cost) raises :class:`DatasetError` naming
    its line and field. When no row gives any cost, every cost is 0 (a
    quality-only data set) and a note says so.
    """
    requests: list[dict[str, Any]] = []
    tasks: list[str] = []
    quality: list[list[float]] = []
    cost: list[list[float | None]] = []
    lat: list[list[float]] = []
    en: list[list[float]] = []
    resp: list[list[float]] = []
    lines: list[int] = []
    models: tuple[str, ...] | None = None
    has_lat = has_en = True
    any_cost = False
    counts = _RowCounts()
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(path, line_no, None, f"not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(path, line_no, None, "expected a JSON object per line")
            if "prompt" not in row or not isinstance(row["prompt"], (str, list)):
                raise DatasetError(path, line_no, "prompt", "required: a string or a list")
            per = row.get("models")
            if not isinstance(per, dict) or not per:
                raise DatasetError(path, line_no, "models", "required: an object of models")
            counts.read += 1
            if models is None:
                models = tuple(per)
            for m in per:
                if m not in models:
                    counts.extra[m] = counts.extra.get(m, 0) + 1
            q_row: list[float] = []
            c_row: list[float | None] = []
            missing: list[str] = []
            for m in models:
                entry = per.get(m)
                if entry is not None and not isinstance(entry, dict):
                    raise DatasetError(path, line_no, f"models.{m}", "expected an object")
                if entry is None or entry.get("quality") is None:
                    missing.append(m)
                    continue
                q_row.append(_number(entry["quality"], path, line_no, f"models.{m}.quality", True))
                c = entry.get("cost_usd")
                if c is not None:
                    any_cost = True
                    c = _number(c, path, line_no, f"models.{m}.cost_usd", False)
                c_row.append(c)
                for key in ("latency_ms", "energy_j"):
                    if entry.get(key) is not None:
                        _number(entry[key], path, line_no, f"models.{m}.{key}", False)
            if missing:
                counts.drop(f"line {line_no}", missing)
                continue
            lines.append(line_no)
            requests.append(chat_request(row["prompt"], row.get("task"), row.get("metadata")))
            tasks.append(str(row.get("task") or ""))
            quality.append(q_row)
            cost.append(c_row)
            has_lat &= all(per[m].get("latency_ms") is not None for m in models)
            has_en &= all(per[m].get("energy_j") is not None for m in models)
            lat.append([_or_nan(per[m].get("latency_ms")) for m in models])
            en.append([_or_nan(per[m].get("energy_j")) for m in models])
            resp.append([len(str(per[m].get("response", ""))) or np.nan for m in models])
    models = models or ()
    notes = counts.notes(models, "those of the first row")
    if any_cost:  # a row missing a cost is incomplete too
        keep = []
        for i, c_row in enumerate(cost):
            gaps = [m for m, c in zip(models, c_row, strict=True) if c is None]
            if gaps:
                counts.drop(f"line {lines[i]}", gaps)
            else:
                keep.append(i)
        if len(keep) < len(cost):
            requests = [requests[i] for i in keep]
            tasks = [tasks[i] for i in keep]
            quality = [quality[i] for i in keep]
            cost = [cost[i] for i in keep]
            lat, en, resp = [lat[i] for i in keep], [en[i] for i in keep], [resp[i] for i in keep]
        notes = counts.notes(models, "those of the first row")
    else:
        cost = [[0.0] * len(models) for _ in requests]
        notes.append("no cost_usd in the data: every cost is 0 (a quality-only data set)")
    r = np.asarray(resp, dtype=float)
    r = np.where(np.isnan(r), DEFAULT_OUTPUT_TOKENS * CHARS_PER_TOKEN, r)
    ds = build_dataset(
        requests, tasks, models, quality, cost,  # type: ignore[arg-type]
        lat if has_lat else None, en if has_en else None, r.tolist(), str(path),
    )  # fmt: skip
    ds.notes[:0] = notes
    return ds


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
    """Read a RouterBench-style CSV folder (or one file) as one stream of complete rows.

    The model set is the first file's (a ``<model>`` column with a
    ``<model>|total_cost`` beside it); a row with an empty quality or cost is
    dropped and counted in the notes; a non-numeric quality or cost, or a quality
    outside [0, 1], raises :class:`DatasetError` naming the file, line and column.
    """
    csv.field_size_limit(sys.maxsize)
    path = Path(path)
    requests: list[dict[str, Any]] = []
    tasks: list[str] = []
    quality: list[list[float]] = []
    cost: list[list[float]] = []
    resp: list[list[float]] = []
    models: tuple[str, ...] | None = None
    counts = _RowCounts()
    for file in _csv_files(path, pattern):
        with open(file, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            file_models = tuple(c for c in cols if f"{c}|total_cost" in cols)
            if not file_models:
                raise DatasetError(
                    file, 1, None,
                    "no model columns: a RouterBench CSV has a '<model>' quality column "
                    "and a '<model>|total_cost' column per model",
                )  # fmt: skip
            if "prompt" not in cols:
                raise DatasetError(file, 1, "prompt", "no prompt column in the header")
            if models is None:
                models = file_models
            elif set(file_models) != set(models):
                raise DatasetError(file, 1, None, "models differ from the first file's")
            for row in reader:
                counts.read += 1
                line = reader.line_num
                gaps = [m for m in models if row[m] in ("", None)]
                gaps += [m for m in models if row[f"{m}|total_cost"] in ("", None)]
                if gaps:
                    counts.drop(f"{file.name} line {line}", sorted(set(gaps)))
                    continue
                task = row.get("eval_name") or file.stem
                requests.append(chat_request(_parse_list(row["prompt"] or ""), task, None))
                tasks.append(task)
                quality.append([_number(row[m], file, line, m, True) for m in models])
                cost.append(
                    [_number(row[f"{m}|total_cost"], file, line, f"{m}|total_cost", False)
                     for m in models]
                )  # fmt: skip
                resp.append(
                    [
                        sum(map(len, _parse_list(row.get(f"{m}|model_response") or "")))
                        for m in models
                    ]
                )
    models = models or ()
    ds = build_dataset(requests, tasks, models, quality, cost, None, None, resp, str(path))
    ds.notes[:0] = counts.notes(models, "those of the first file")
    return ds


JSONL_HELP = "learners/datasets.py (its module docstring)"


def detect_format(path: str | Path) -> str:
    """``"jsonl"`` or ``"csv"``, judged by content (a folder is a CSV folder).

    A file whose first non-blank character is ``{`` is JSONL; one whose first
    line is a CSV header with ``<model>|total_cost`` columns is a RouterBench CSV;
    anything else raises :class:`DatasetError` saying what was expected.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no data set at {p}")
    if p.is_dir():
        return "csv"
    with open(p, encoding="utf-8", errors="replace") as fh:
        head = fh.read(1 << 16)
    text = head.lstrip()
    if text.startswith("{"):
        return "jsonl"
    first = text.splitlines()[0] if text else ""
    if "|total_cost" in first:
        return "csv"
    raise DatasetError(
        p, 1, None,
        "neither JSONL (one JSON object per line, starting with '{'; schema in "
        f"{JSONL_HELP}) nor a RouterBench CSV (a header with '<model>|total_cost' columns)",
    )  # fmt: skip


def load_dataset(path: str | Path, pattern: str = "*.csv") -> RoutingDataset:
    """A JSONL file, or a RouterBench CSV file or folder, whatever its file name says."""
    if detect_format(path) == "jsonl":
        return read_jsonl(path)
    return read_routerbench(path, pattern)
