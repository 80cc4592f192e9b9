"""A small built-in corpus with realistic prompt and output lengths per kind of user.

Lengths are drawn from log-normal distributions (most requests short, a long tail), the
shape seen in production chat and code-completion traffic; text is assembled from the
passages below until the drawn length in tokens is reached (words per token of each pool
measured with the Mistral v3 tokenizer: prose 0.75, code 0.35, build logs 0.17).
Everything is seeded, so a run's requests are reproducible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

PROSE, CODE_WPT, LOG_WPT = 0.75, 0.35, 0.17


@dataclass(frozen=True)
class LogNormal:
    """Log-normal length in tokens: ``median``, spread ``sigma``, clipped to [lo, hi]."""

    median: float
    sigma: float
    lo: int
    hi: int

    def draw(self, rng: random.Random) -> int:
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(self.hi, max(self.lo, round(value))))


# Token lengths by kind (prompt, output). Chat: questions with some pasted context, answers
# of a paragraph or two. IDE: the code above the cursor, a little below, a line or two out.
# CI: a diff or log plus instructions in, a review or summary out.
CHAT_PROMPT = LogNormal(median=120, sigma=0.8, lo=12, hi=1500)
CHAT_OUTPUT = LogNormal(median=96, sigma=0.6, lo=16, hi=384)
IDE_PREFIX = LogNormal(median=250, sigma=0.7, lo=30, hi=1500)
IDE_SUFFIX = LogNormal(median=50, sigma=0.8, lo=0, hi=400)
IDE_OUTPUT = LogNormal(median=24, sigma=0.5, lo=4, hi=64)
CI_PROMPT = LogNormal(median=500, sigma=0.6, lo=100, hi=2500)
CI_OUTPUT = LogNormal(median=256, sigma=0.4, lo=64, hi=512)

SYSTEM_PROMPT = "You are a helpful assistant for the engineers of this company. Answer concisely."

QUESTIONS = [
    "How do I roll back a failed deployment without losing the database migration?",
    "Explain the difference between tensor parallelism and pipeline parallelism.",
    "Why does my service return 502 only under load, and how should I investigate it?",
    "Summarise the trade-offs of fixed-window versus sliding-window rate limiting.",
    "What is a good way to structure retries with jitter for an HTTP client?",
    "Write a short incident update for customers about elevated API latency.",
    "How should I size the KV cache for a model with a 32k context window?",
    "Review this paragraph for clarity and suggest a shorter version.",
    "What does continuous batching change compared to static batching?",
    "Translate this error message into plain language for a support ticket.",
    "Draft a checklist for onboarding a new team onto the inference platform.",
    "Which metrics tell me that a GPU node is the bottleneck rather than the network?",
]

PASSAGES = [
    "The gateway authenticates every request with the team's key, checks that the model is "
    "allowed, reserves quota for the prompt and the requested completion, and forwards the "
    "request to the model deployment with the team's priority.",
    "During the incident the p95 latency rose from 400 milliseconds to 3.2 seconds while the "
    "error rate stayed flat; the queue in front of the engine grew because a batch job had "
    "started without a concurrency limit.",
    "Our service reads configuration from environment variables at start-up, validates them "
    "against a schema and refuses to start when a required secret is missing, which turns a "
    "silent misconfiguration into an obvious failed rollout.",
    "Mixture-of-experts layers route each token to two of eight experts, so only a fraction "
    "of the parameters is active per token, but all of them must stay resident in memory.",
    "The release process tags the commit, builds the image once, promotes the same digest "
    "through staging and production, and keeps the previous release ready for a rollback.",
    "Customers reported intermittent timeouts between 14:05 and 14:40 UTC. The load balancer "
    "health checks passed throughout; the database connection pool was exhausted on two of "
    "the six application nodes.",
    "Rate limits are enforced per team and per key over fixed, clock-aligned windows, and a "
    "rejected request receives status 429 with a Retry-After header and the remaining quota "
    "in the x-ratelimit headers.",
    "When the cache hit rate drops the first symptom is usually higher time to first token, "
    "because every prompt has to be prefilled from scratch instead of reusing shared prefixes.",
    "The team agreed to keep dashboards per service, alerts on symptoms rather than causes, "
    "and a runbook link in every alert so that whoever is on call knows the first step.",
    "Tensor parallelism splits each layer's matrices across GPUs within a node, while pipeline "
    "parallelism places consecutive layers on different nodes and passes activations along.",
]

CODE = [
    "import json\nimport logging\nfrom pathlib import Path\n\nlog = logging.getLogger(__name__)\n",
    "def load_config(path: Path) -> dict:\n    with path.open() as f:\n"
    "        data = json.load(f)\n"
    "    if 'version' not in data:\n        raise ValueError(f'{path}: missing version')\n"
    "    return data\n",
    "class RetryPolicy:\n    def __init__(self, attempts: int = 3, base_s: float = 0.2) -> None:\n"
    "        self.attempts = attempts\n        self.base_s = base_s\n\n"
    "    def delay(self, attempt: int) -> float:\n        return self.base_s * 2 ** attempt\n",
    "def parse_line(line: str) -> tuple[str, int]:\n    name, _, count = line.partition(',')\n"
    "    return name.strip(), int(count)\n",
    "async def fetch_all(client, urls):\n    results = []\n    for url in urls:\n"
    "        resp = await client.get(url, timeout=10)\n        resp.raise_for_status()\n"
    "        results.append(resp.json())\n    return results\n",
    "def summarize(rows: list[dict]) -> dict:\n    total = sum(r['amount'] for r in rows)\n"
    "    by_team: dict[str, float] = {}\n    for r in rows:\n"
    "        by_team[r['team']] = by_team.get(r['team'], 0.0) + r['amount']\n"
    "    return {'total': total, 'by_team': by_team}\n",
    "@dataclass\nclass Job:\n    id: str\n    status: str = 'queued'\n    attempts: int = 0\n",
    "def test_parse_line():\n    assert parse_line('a, 3') == ('a', 3)\n",
]

CI_TASKS = [
    "Review the following diff for bugs and risky changes. List each finding with the file "
    "and a one-line fix.",
    "Summarise the following build log: what failed, the likely cause, and the next step.",
    "Write unit tests for the following module. Cover edge cases and error paths.",
    "Generate release notes from the following changes, grouped by feature and fix.",
]

LOG_LINES = [
    "2026-11-21T10:14:03Z INFO  step 3/9 compiling package api",
    "2026-11-21T10:14:09Z WARN  deprecated option 'legacy_tls' in build.yaml",
    "2026-11-21T10:14:27Z ERROR test_orders.py::test_refund FAILED (AssertionError)",
    "2026-11-21T10:14:28Z INFO  retrying flaky test test_payments.py::test_timeout",
    "2026-11-21T10:15:02Z INFO  uploading artifact image sha256:4f1c... (212 MB)",
]


def text_of(
    pool: list[str], tokens: int, rng: random.Random, sep: str = " ", words_per_token=PROSE
) -> str:
    """Passages from ``pool``, starting at a random one, until ~``tokens`` tokens."""
    if tokens <= 0:
        return ""
    target_words = max(1, round(tokens * words_per_token))
    parts: list[str] = []
    words = 0
    i = rng.randrange(len(pool))
    while words < target_words:
        piece = pool[i % len(pool)]
        parts.append(piece)
        words += len(piece.split())
        i += 1
    return sep.join(parts)


def cap(length: int, max_tokens: int | None) -> int:
    return min(length, max_tokens) if max_tokens else length


def chat_request(rng: random.Random, max_tokens: int | None) -> dict:
    context = text_of(PASSAGES, CHAT_PROMPT.draw(rng) - 20, rng)
    question = rng.choice(QUESTIONS)
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{context}\n\n{question}" if context else question},
        ],
        "max_tokens": cap(CHAT_OUTPUT.draw(rng), max_tokens),
        "temperature": 0.7,
    }


def ide_request(rng: random.Random, max_tokens: int | None) -> dict:
    prefix = text_of(CODE, IDE_PREFIX.draw(rng), rng, sep="\n", words_per_token=CODE_WPT)
    suffix = text_of(CODE, IDE_SUFFIX.draw(rng), rng, sep="\n", words_per_token=CODE_WPT)
    return {
        "prompt": prefix + "\ndef ",
        "suffix": "\n" + suffix,
        "max_tokens": cap(IDE_OUTPUT.draw(rng), max_tokens),
        "temperature": 0.2,
    }


def ci_request(rng: random.Random, max_tokens: int | None) -> dict:
    task = rng.choice(CI_TASKS)
    pool, wpt = (LOG_LINES, LOG_WPT) if "log" in task else (CODE, CODE_WPT)
    body = text_of(pool, CI_PROMPT.draw(rng), rng, sep="\n", words_per_token=wpt)
    return {
        "messages": [{"role": "user", "content": f"{task}\n\n{body}"}],
        "max_tokens": cap(CI_OUTPUT.draw(rng), max_tokens),
        "temperature": 0.0,
    }
