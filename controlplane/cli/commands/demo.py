"""``banditctl demo``: the whole loop on a bundled scenario, through the HTTP API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from controlplane.cli.progress import progress_bar

# in waves, answers without feedback are credited (by the objective's missing-quality rule)
# only after the run, so that what each wave learns is the feedback before it
WAVE_WINDOW_S = 600.0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="bring the control plane up on replay backends, send traffic and feedback, watch it learn",
    )
    p.add_argument(
        "--dataset", default="synthetic", help="'synthetic' (bundled) or a data set path"
    )
    p.add_argument("--requests", type=int, default=None, help="send N requests, summarise, exit")
    p.add_argument("--json", dest="json_out", help="write the summary as JSON")
    p.add_argument(
        "--concurrency", type=int, default=8, help="clients at once in one stream (--wave 0)"
    )
    p.add_argument("--feedback-rate", type=float, default=0.9)
    p.add_argument(
        "--wave",
        type=int,
        default=20,
        help="requests per wave, sent one after the other, then their feedback; before each "
        "wave, wait until the gateway serves a policy that learned all feedback so far, so "
        "that a seed's run repeats whatever the machine's speed (0: one stream at "
        "--concurrency, feedback as answers come)",
    )
    p.add_argument("--seed", type=int, default=0, help="the traffic's seed (first seed)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="runs, each from a fresh policy, seeds SEED..; prints ranges",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the demo database's policy instead of starting from a fresh one",
    )
    p.add_argument(
        "--backend",
        choices=["replay", "hf"],
        default="replay",
        help="replay: the bundled data set's recorded answers; hf: SmolLM2 and LoRA adapters"
        " generating on CPU, users rating each answer's opening keyword",
    )
    p.add_argument(
        "--adapter-dir",
        help="hf: adapters made by 'banditctl adapters make' (default <data dir>/adapters;"
        " made there when missing)",
    )
    p.add_argument("--adapters", type=int, default=3, help="hf: how many adapters to serve")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--config", help="a banditctl YAML config instead of the bundled scenario")
    p.set_defaults(func=run)


def _totals(url: str) -> dict[str, int]:
    """Rows in the demo database's tables (a fresh run holds only its own)."""
    from sqlalchemy import create_engine

    from feedback.repositories import reports

    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return reports.table_counts(conn)
    finally:
        eng.dispose()


def _counts_since(url: str, since: datetime) -> dict[str, int]:
    from sqlalchemy import create_engine

    from feedback.repositories import reports

    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return reports.counts_since(conn, since)
    finally:
        eng.dispose()


def run(args: argparse.Namespace) -> int:
    from controlplane.cli.demo import demo_config, require_openai
    from controlplane.cli.launch import require_free_port
    from controlplane.config import ConfigError, load_config
    from controlplane.settings import get_settings

    logging.basicConfig(level=logging.WARNING)
    try:
        require_openai()
    except ModuleNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 2
    if args.resume and args.seeds > 1:
        print("error: --resume continues one policy: it takes no --seeds", file=sys.stderr)
        return 2
    if args.wave < 0:
        print("error: --wave must be 0 or more", file=sys.stderr)
        return 2
    if args.seeds > 1 and args.requests is None:
        print("error: --seeds needs --requests (each seed's run must end)", file=sys.stderr)
        return 2
    try:
        if args.backend == "hf" and not args.config:
            config = _hf_config(args)
        else:
            config = load_config(args.config) if args.config else demo_config(args.dataset)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = config.model_copy(update={"http_port": args.port})
    if args.wave:  # no credit for silence mid-run: it would land at times the machine sets
        objective = config.objective.model_copy(
            update={"feedback_window_s": max(config.objective.feedback_window_s, WAVE_WINDOW_S)}
        )
        config = config.model_copy(update={"objective": objective})
    if not get_settings().ray_address:  # a local run: its port must be free before anything starts
        require_free_port(config.http_host, config.http_port)
    reports = []
    for seed in range(args.seed, args.seed + args.seeds):
        report = _run_one_hf(args, config, seed) if args.backend == "hf" else _run_one(args, config, seed)  # fmt: skip
        if report is None:
            return 1
        reports.append(report)
    if len(reports) > 1:
        _print_range(reports)
    if args.json_out:
        doc = reports[0] if len(reports) == 1 else {"runs": reports}
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json_out}")
    return 0 if all(r["errors"] == 0 for r in reports) else 1


def _run_one(args: argparse.Namespace, config: Any, seed: int) -> dict[str, Any] | None:
    """One demo run: a fresh demo database (unless ``--resume``), the control plane, the
    traffic of ``seed``, and its summary; ``--requests`` unset: serve until Ctrl-C."""
    from controlplane.cli.demo import demo_settings, feedback_waits, run_traffic, summarize
    from controlplane.cli.launch import control_plane
    from controlplane.settings import get_settings
    from learners.replay.dataset import dataset_for

    r = config.replay
    ds = dataset_for(r.dataset, r.synthetic_rows, r.seed)
    settings = demo_settings(get_settings(), fresh=not args.resume)
    since = datetime.now(UTC)
    print(
        f"banditctl demo (seed {seed}): {len(config.arms)} arms on replay backends over "
        f"{ds.source or r.dataset}; "
        + ("continuing the policy in the demo database" if args.resume else "a fresh policy")
    )
    print("starting the database, Ray Serve and the control plane ...", flush=True)
    with control_plane(config, settings) as run_:
        print(f"gateway   : {run_.api_url}  (OpenAI-compatible; model='auto')")
        print(f"dashboard : {run_.base_url}/dashboard")
        print(f"policies  : {run_.api_url}/policies/current")
        n = args.requests if args.requests is not None else 1000
        arm_models = {a.name: a.model for a in config.arms}
        with progress_bar(total=n, desc="requests", unit="req") as bar:
            traffic = run_traffic(
                run_.api_url, ds, arm_models, n, seed=seed,
                concurrency=args.concurrency, feedback_rate=args.feedback_rate, progress=bar,
                wave=args.wave or None,
            )  # fmt: skip
        summary = summarize(ds, traffic, config.objective.weight_vector)
        # let the writer flush and the learner publish what it learned
        deadline = time.monotonic() + 15
        counts = _counts_since(run_.db.url, since)
        while time.monotonic() < deadline and (
            counts["outcomes"] < len(traffic.served) or counts["policy_versions"] < 2
        ):
            time.sleep(0.5)
            counts = _counts_since(run_.db.url, since)
        report: dict[str, Any] = {
            "seed": seed,
            "requests": n,
            "served": len(traffic.served),
            "errors": len(traffic.errors),
            "feedback_posted": traffic.feedback_posted,
            "seconds": round(traffic.seconds, 2),
            "requests_per_s": round(len(traffic.served) / max(traffic.seconds, 1e-9), 1),
            "wave": args.wave,
            "seconds_waiting_for_policy": round(sum(traffic.waits), 2),
            **counts,
            "database_totals": _totals(run_.db.url),
            "feedback_waits": feedback_waits(run_.base_url),
            "summary": summary,
        }
        _print_summary(report)
        for e in traffic.errors[:5]:
            print(f"  error: {e}", file=sys.stderr)
        if args.requests is None:
            print(f"serving on {run_.base_url}; open {run_.base_url}/dashboard. Ctrl-C stops.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return report


def _hf_config(args: argparse.Namespace) -> Any:
    """SmolLM2 and ``--adapters`` adapters from ``--adapter-dir`` (made there if missing)."""
    from pathlib import Path

    from controlplane.cli.demo_hf import find_adapters, hf_demo_config
    from controlplane.settings import get_settings

    folder = Path(args.adapter_dir) if args.adapter_dir else get_settings().data_dir / "adapters"
    found = find_adapters(folder, args.adapters) if folder.is_dir() else []
    if len(found) < args.adapters:
        from deployments.backends.hf_adapters import make_adapters
        from deployments.backends.hf_models import load_causal_lm, require_hf, resolve_model

        require_hf()
        print(f"making {args.adapters} LoRA adapters in {folder} ...", flush=True)
        files = resolve_model(None, get_settings().data_dir / "models")
        model, tokenizer = load_causal_lm(files.folder, None)
        made = make_adapters(model, tokenizer, folder, n=args.adapters, base=str(files.source))
        found = [(a.name, a.keyword) for a in made]
    return hf_demo_config(folder, found)


def _run_one_hf(args: argparse.Namespace, config: Any, seed: int) -> dict[str, Any] | None:
    """One demo run on SmolLM2: a fresh demo database (unless ``--resume``), the control
    plane, ``--requests`` streamed chats rated on their opening keyword, and the summary."""
    from controlplane.cli.demo import demo_settings, feedback_waits
    from controlplane.cli.demo_hf import print_hf_summary, run_hf_traffic, summarize_hf
    from controlplane.cli.launch import control_plane
    from controlplane.settings import get_settings

    keywords = list(config.featurizer.tasks)
    settings = demo_settings(get_settings(), fresh=not args.resume)
    since = datetime.now(UTC)
    print(
        f"banditctl demo --backend hf (seed {seed}): SmolLM2-135M-Instruct with no adapter and "
        f"with {len(keywords)} LoRA adapters; users want answers opening with "
        + ", ".join(keywords)
    )
    print("starting the database, Ray Serve and the control plane ...", flush=True)
    with control_plane(config, settings) as run_:
        print(f"gateway   : {run_.api_url}  (OpenAI-compatible; model='auto')")
        print(f"dashboard : {run_.base_url}/dashboard")
        n = args.requests if args.requests is not None else 100
        with progress_bar(total=n, desc="requests", unit="req") as bar:
            traffic = run_hf_traffic(
                run_.api_url, keywords, n, seed=seed, concurrency=min(args.concurrency, 2),
                progress=bar,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        counts = _counts_since(run_.db.url, since)
        while time.monotonic() < deadline and counts["outcomes"] < len(traffic.answers):
            time.sleep(0.5)
            counts = _counts_since(run_.db.url, since)
        report: dict[str, Any] = {
            "seed": seed,
            "backend": "hf",
            "requests": n,
            "served": len(traffic.answers),
            "errors": len(traffic.errors),
            "seconds": round(traffic.seconds, 2),
            **counts,
            "feedback_waits": feedback_waits(run_.base_url),
            "summary": summarize_hf(traffic),
        }
        print_hf_summary(report)
        for e in traffic.errors[:5]:
            print(f"  error: {e}", file=sys.stderr)
    return report


def _print_range(reports: list[dict[str, Any]]) -> None:
    """Each figure's range over the seeds' runs."""

    def span(key: str, fmt: str = "{:.3f}") -> str:
        vals = [r["summary"][key] for r in reports]
        return f"{fmt.format(min(vals))}-{fmt.format(max(vals))}"

    s0 = reports[0]["summary"]
    print(f"\nover {len(reports)} seeds ({reports[0]['seed']}-{reports[-1]['seed']}):")
    print(
        f"  mean reward {span('mean_reward')} (first half {span('mean_reward_first_half')}, "
        f"second half {span('mean_reward_second_half')}); always {s0['best_model']}: "
        f"{span('best_model_mean_reward')}"
    )
    print(
        f"  second half to each task's best arm: {span('best_arm_share_second_half', '{:.0%}')}; "
        f"cost saved {span('cost_saved_vs_best_pct', '{:.0f}')}%, "
        f"energy saved {span('energy_saved_vs_best_pct', '{:.0f}')}%"
    )


def _print_summary(rep: dict[str, Any]) -> None:
    s = rep["summary"]
    print(
        f"\nrequests {rep['requests']}  decisions {rep['decisions']}  outcomes {rep['outcomes']}  "
        f"feedback rows {rep['feedback_rows']}  policy versions {rep['policy_versions']}  "
        f"({rep['requests_per_s']} req/s"
        + (
            f"; in waves of {rep['wave']}, {rep['seconds_waiting_for_policy']:.1f} s waiting for "
            "the policy to catch up)"
            if rep.get("wave")
            else ")"
        )
    )
    if not s.get("served"):
        return
    print(
        "traffic share per arm: " + ", ".join(f"{a} {v:.0%}" for a, v in s["traffic_share"].items())
    )
    print("second half, per task (its best arm in hindsight in brackets):")
    for task, arms in s["traffic_share_by_task_second_half"].items():
        best = s["best_arm_by_task"].get(task, "")
        print(f"  {task:<14} " + ", ".join(f"{a} {v:.0%}" for a, v in arms.items()) + f"  [{best}]")
    print(
        f"mean reward {s['mean_reward']:.3f} (first half {s['mean_reward_first_half']:.3f}, "
        f"second half {s['mean_reward_second_half']:.3f}); always {s['best_model']}: "
        f"{s['best_model_mean_reward']:.3f}"
    )
    print(
        f"quality {s['mean_quality']:.3f} vs {s['best_model_mean_quality']:.3f}; "
        f"cost ${s['mean_cost_usd']:.5f} vs ${s['best_model_mean_cost_usd']:.5f} "
        f"({s['cost_saved_vs_best_pct']:.0f}% saved); energy {s['mean_energy_j']:.1f} J vs "
        f"{s['best_model_mean_energy_j']:.1f} J ({s['energy_saved_vs_best_pct']:.0f}% saved)"
    )
    from controlplane.cli.demo import wait_line

    line = wait_line(rep.get("feedback_waits"))
    if line:
        print(line)
