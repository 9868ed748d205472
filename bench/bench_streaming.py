"""Streaming through the gateway: time to first token and to the end, seen by the client.

A fake OpenAI upstream (``tests/compat/fake_upstream.py``, on a loopback port) sends an
answer of ``--words`` words, one chunk every ``--delay-ms``; the official ``openai``
client asks for it three ways, ``--repeats`` times each, and the table prints the
medians side by side:

- ``upstream``: straight to the fake (the floor);
- ``gateway stream``: through the gateway app (uvicorn, in process, no Ray) with
  ``stream: true``: the pool's deltas forwarded as they come;
- ``gateway whole``: the same without streaming: the first token arrives with the
  last, which is also what ``stream: true`` gave before the gateway consumed the
  pool's stream.

    python bench/bench_streaming.py [--database-url URL] [--words 40] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database  # noqa: E402

from tests.compat.conftest import compat_config, running_gateway  # noqa: E402
from tests.compat.fake_upstream import FakeUpstream  # noqa: E402


def timed(client: openai.OpenAI, model: str, words: int, stream: bool) -> tuple[float, float]:
    """(seconds to the first content, seconds to the end) of one request."""
    ask = [{"role": "user", "content": " ".join(["word"] * words)}]
    start = time.perf_counter()
    if not stream:
        client.chat.completions.create(model=model, messages=ask)
        end = time.perf_counter() - start
        return end, end
    first = None
    for chunk in client.chat.completions.create(model=model, messages=ask, stream=True):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    end = time.perf_counter() - start
    return (first if first is not None else end), end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    fake = FakeUpstream().start()
    fake.delay_s = args.delay_ms / 1000.0
    rows = []
    try:
        with scratch_database(args.database_url, "bench_streaming") as (url, where):
            cfg = compat_config(fake.base_url)
            with running_gateway(cfg, url, Path(tempfile.mkdtemp()), fake) as gw:
                direct = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0)
                via = gw.client()
                cases = [
                    ("upstream", direct, "model-a", True),
                    ("gateway stream", via, "up-a", True),
                    ("gateway whole", via, "up-a", False),
                ]
                for _name, client, model, stream in cases:  # warm up
                    timed(client, model, args.words, stream)
                for name, client, model, stream in cases:
                    runs = [timed(client, model, args.words, stream) for _ in range(args.repeats)]
                    rows.append((name, [r[0] for r in runs], [r[1] for r in runs]))
                ttft = gw.rows(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS p50 "
                    "FROM outcomes"
                )[0]["p50"]
    finally:
        fake.stop()
    print(f"database: {where}; {args.words} words, a chunk every {args.delay_ms:g} ms, "
          f"{args.repeats} requests each (medians)")  # fmt: skip
    print(f"{'':16s} {'first token ms':>15s} {'last token ms':>14s}")
    for name, first, end in rows:
        print(f"{name:16s} {statistics.median(first) * 1000:15.1f} "
              f"{statistics.median(end) * 1000:14.1f}")  # fmt: skip
    print(f"outcomes' ttft_ms (measured at the gateway), p50 over both gateway cases: {ttft:.1f}")


if __name__ == "__main__":
    main()
