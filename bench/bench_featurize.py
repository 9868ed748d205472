"""What featurizing a request costs by the length of its prompt: the text block capped at
``max_text_words`` (the default, 2048) against every word hashed (``None``), side by side.

    python bench/bench_featurize.py [--words 20,500,5000,20000,100000] [--repeats 20]

Featurizing runs on the gateway's event loop, for every request, before it is routed:
while it runs no other request on that replica moves. Prompts are one paragraph (the
segment the text block reads is the whole prompt) of seeded random words, 2 to 9
letters, drawn with Zipf-like weights from an 8,000-word vocabulary; each figure is the
median over ``--repeats`` calls, after one warm-up call.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learners.featurize import Featurizer  # noqa: E402


def prompt(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(8000)]  # fmt: skip
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    return " ".join(rng.choices(vocab, weights, k=n_words))


def median_ms(f: Featurizer, body: dict, repeats: int) -> float:
    f.featurize(body)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f.featurize(body)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--words", default="20,500,5000,20000,100000")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    capped, uncapped = Featurizer(), Featurizer(max_text_words=None)
    print(f"featurize one request, median of {args.repeats} calls (ms); cap {capped.max_text_words} words")  # fmt: skip
    print(f"{'words':>8} {'chars':>9} {'every word':>11} {'capped':>8} {'ratio':>6}")
    for n in (int(w) for w in args.words.split(",")):
        text = prompt(n)
        body = {"messages": [{"role": "user", "content": text}]}
        full, cut = median_ms(uncapped, body, args.repeats), median_ms(capped, body, args.repeats)
        print(f"{n:>8,} {len(text):>9,} {full:>11.3f} {cut:>8.3f} {cut / full:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
