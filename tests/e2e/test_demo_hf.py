"""The demo on a real model, as the README runs it: ``banditctl demo --backend hf --requests
40`` serves SmolLM2 and three LoRA adapters through the gateway, streamed, and users' feedback
on the real generations moves the policy (a subprocess with its own local Ray).

SmolLM2's converted copy and the demo's adapters live in ``$BANDITCTL_TEST_DATA_DIR``
(default: a folder in the system's temporary directory), so only a machine's first run pays
the GGUF conversion and the adapters' training.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.demo_run import run_demo

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_hf_demo_serves_real_streamed_generations_and_feedback_moves_the_policy(
    pg_server, tmp_path, model_data_dir
):
    out = tmp_path / "demo.json"
    args = ["--backend", "hf", "--requests", "40"]
    done = run_demo(pg_server, model_data_dir, out, args, timeout_s=1200)
    print(done.stdout[-2500:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads(out.read_text())  # one seed: its report
    s = run["summary"]
    assert run["backend"] == "hf" and run["errors"] == 0 and run["served"] == s["served"] == 40
    # every answer was logged as a decision with its outcome, and every rating stored
    assert run["decisions"] == run["outcomes"] == run["feedback_rows"] == 40
    # streamed: the first token came before the last, and tokens were generated
    assert 0 < s["ttft_ms_p50"] <= s["ttft_ms_max"] and s["tokens_per_s"] > 0
    assert s["sample"]["text"].strip()
    # the feedback moved the policy: answers were served by several published versions
    assert run["policy_versions"] >= 2 and len(s["policy_versions_seen"]) >= 2
    # ... towards each user's adapter: chance (one of four arms) would open a quarter of the
    # second half's answers with the asked-for keyword (README: 25% -> 75%, 55% -> 100%)
    assert s["quality_second_half"] > 0.4, s
    # ... because the ratings reached the learner as they came: by the end of the traffic
    # nearly every one was credited (when the claim frontier ran ahead of the gateway's log
    # flush, 15 of 40 were, and the rest waited for a sweep 30 s later)
    waits = run["feedback_waits"]
    assert waits is not None and waits["ratings"] >= 30, waits
    # the second half went to the base model and the three adapters the demo made
    from controlplane.cli.demo_hf import find_adapters

    served = {a for by in s["arms_by_task_second_half"].values() for a in by}
    named = {"smol"} | {f"smol:{name}" for name, _ in find_adapters(model_data_dir / "adapters", 3)}
    assert served <= named and len(named) == 4
