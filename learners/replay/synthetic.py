"""A small synthetic routing scenario, for when no data set is at hand.

Three tasks (``code``, ``math``, ``trivia``) and four models. Each prompt is a
short template filled with topic words; one topic word per task ("hard"
topics) makes the prompt harder. Model ``m`` answers a prompt of task ``t``
correctly with probability ``sigmoid(skill[m, t] - hardness[m] * hard)``:

=========  ====  ====  ======  ==========  ===============
model      code  math  trivia  hard drop   USD per 1k tok
=========  ====  ====  ======  ==========  ===============
small      0.0   -0.5  1.0     2.0         0.0002
coder      2.0   0.0   -0.5    1.0         0.0008
mathy      0.0   2.0   -0.5    1.0         0.0008
large      1.5   1.5   1.5     0.3         0.0100
=========  ====  ====  ======  ==========  ===============

so the best model depends on the task and, through the hard topics, on the
words of the prompt. Costs are price x tokens (4 characters a token, 200
output tokens); latency and energy come from the per-model profile.
"""

from __future__ import annotations

import numpy as np

from learners.datasets import RoutingDataset, build_dataset, chat_request

MODELS = ("small", "coder", "mathy", "large")
TASKS = ("code", "math", "trivia")
SKILL = np.array([[0.0, -0.5, 1.0], [2.0, 0.0, -0.5], [0.0, 2.0, -0.5], [1.5, 1.5, 1.5]])
HARD_DROP = np.array([2.0, 1.0, 1.0, 0.3])
PRICE_PER_1K = np.array([0.0002, 0.0008, 0.0008, 0.01])
TEMPLATES = {
    "code": "Write a python function that {a} a list of {b} and returns the {c}.",
    "math": "Solve for x: the {a} of {b} equals the {c} of 12 and 7.",
    "trivia": "Which {a} is known for the {b} in the history of {c}?",
}
WORDS = {
    "code": (["sorts", "filters", "merges", "reverses", "recursion"], ["ints", "strings", "trees"], ["sum", "max", "graph"]),
    "math": (["sum", "product", "integral", "eigenvalue"], ["x", "2x", "x squared"], ["sum", "difference", "ratio"]),
    "trivia": (["city", "river", "painter", "dynasty"], ["battle", "treaty", "festival"], ["europe", "asia", "byzantium"]),
}  # fmt: skip
HARD_WORDS = {"code": "recursion", "math": "eigenvalue", "trivia": "byzantium"}


def synthetic_dataset(n: int = 1500, seed: int = 0) -> RoutingDataset:
    """``n`` prompts with every model's sampled quality and cost (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    requests, tasks, quality, cost = [], [], [], []
    for _ in range(n):
        t = int(rng.integers(len(TASKS)))
        task = TASKS[t]
        a, b, c = (str(rng.choice(ws)) for ws in WORDS[task])
        text = TEMPLATES[task].format(a=a, b=b, c=c)
        hard = float(HARD_WORDS[task] in (a, b, c))
        p = 1.0 / (1.0 + np.exp(-(SKILL[:, t] - HARD_DROP * hard)))
        q = (rng.random(len(MODELS)) < p).astype(float)
        tokens = len(text) / 4.0 + 200.0
        requests.append(chat_request(text, task, None))
        tasks.append(task)
        quality.append(q.tolist())
        cost.append((PRICE_PER_1K * tokens / 1000.0).tolist())
    ds = build_dataset(
        requests, tasks, MODELS, quality, cost, None, None, None, f"synthetic(n={n}, seed={seed})"
    )
    return ds
