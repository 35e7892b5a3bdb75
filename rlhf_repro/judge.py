"""Pairwise judges of a policy's summaries against the human references (n-plus-details §4.2).

One interface, three backends:
- `OpenAIJudge` (in `judge_openai.py`, the HTTP client: retries, rate limits, the answer cache): any
  OpenAI-compatible chat-completions server (`openai` package; base URL, key and model from flags or the
  environment, so vLLM works too). Default model gpt-3.5-turbo-0125.
- `RewardModelJudge`: our RM (or the critic) prefers the summary it scores higher.
- `GoldJudge`: the simulated world's gold labeler prefers the higher gold score.

Per row the judge records which side the policy was shown on (a seeded coin flip per row, so a rerun
shows the same order), the raw answer, the explanation and the verdict. LLM answers are parsed in one
of two modes:
- `paper`: the reference's rule. The text after "Preferred:" must be exactly "A" or "B"; anything
  else ("A.", '"A"', extra words) counts for the reference. If a marker is missing the verdict is a
  coin flip (seeded here; unseeded in the reference).
- `strict`: quotes, markdown and a trailing period around the letter are tolerated; an answer still
  unparseable is asked again (up to --strict-retries), then reported with no verdict, never guessed.

Requests run concurrently (`concurrency`) and are retried on transient faults: 429 (waiting what the
server's Retry-After asks, and pausing every worker meanwhile), 5xx, timeouts, dropped connections and
truncated response bodies, with exponential backoff otherwise; every wait is capped by `max_wait`. A row
whose request still fails after the last retry is recorded with no verdict, its `error` and its
`failure` reason (see FAILURE_REASONS), and `summarize` counts failures by reason. Answers are cached on
disk keyed by (model, temperature, seed, prompt) in an append-only JSONL file, fsynced per record, so an
interrupted run (even a SIGKILL) resumes without asking twice; failures are not cached, so a rerun asks
again exactly the rows that failed.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_repro.io import InputError

TEMPLATE_DIR = Path(__file__).parent / "judge_templates"
DEFAULT_TEMPLATE = TEMPLATE_DIR / "tldr.txt"
DEFAULT_MODEL = "gpt-3.5-turbo-0125"

# Why a row got no verdict, as `Judgement.failure` and the summary's `failures` name it.
FAILURE_REASONS = {
    "rate_limited": "HTTP 429 after the last retry",
    "server_error": "HTTP 5xx after the last retry",
    "timeout": "no answer within --timeout, after the last retry",
    "connection": "connection refused, reset or closed mid-answer, after the last retry",
    "bad_response": "a 200 whose body is not a chat completion (e.g. JSON cut short), after the last retry",
    "client_error": "another HTTP 4xx (bad key, unknown model, prompt too long): not retried",
    "unparsed": "strict mode: no verdict in the answer after the re-asks",
    "error": "anything else (a bug, reported per row rather than stopping the run)",
}


def load_template(path: str | os.PathLike | None = None) -> str:
    path = Path(path) if path else DEFAULT_TEMPLATE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read the judge template ({e.strerror})", path) from None
    for key in ("{post}", "{summary_a}", "{summary_b}"):
        if key not in text:
            raise InputError(f"the judge template lacks the placeholder {key}", path)
    return text


def post_text(query: str) -> str:
    """The post as the judge sees it: the query stripped of padding and the trailing 'TL;DR:'."""
    text = query.replace("[PAD]", "").strip()
    return text[: -len("TL;DR:")].strip() if text.endswith("TL;DR:") else text


def render(template: str, post: str, summary_a: str, summary_b: str) -> str:
    return template.replace("{post}", post).replace("{summary_a}", summary_a).replace("{summary_b}", summary_b)


def split_answer(answer: str) -> tuple[str, str] | None:
    """(explanation, verdict text) per the reference's rule, or None when a marker is missing."""
    if "Comparison:" not in answer or "Preferred:" not in answer:
        return None
    explanation = answer.split("Comparison:", 1)[1].split("Preferred:", 1)[0].strip()
    return explanation, answer.split("Preferred:", 1)[1].strip()


_STRICT_LETTER = re.compile(r"""^[\s"'*`(\[]*([AB])[\s"'*`)\].]*$""")


def parse_verdict(answer: str, mode: str) -> tuple[str, str | None]:
    """(explanation, 'A' | 'B' | 'other' | None). None: no verdict could be read (markers missing in
    either mode, or in strict mode a verdict that is not a letter)."""
    parts = split_answer(answer)
    if parts is None:
        return "", None
    explanation, verdict = parts
    if mode == "paper":
        return explanation, verdict if verdict in ("A", "B") else "other"
    m = _STRICT_LETTER.match(verdict.splitlines()[0] if verdict else "")
    return explanation, m.group(1) if m else None


def row_position(seed: int, key: str) -> str:
    """The side ('A' or 'B') the policy's summary is shown on for this row: a seeded coin flip."""
    return "A" if random.Random(f"{seed}/position/{key}").random() < 0.5 else "B"


def coin_flip(seed: int, key: str) -> str:
    return "A" if random.Random(f"{seed}/coin/{key}").random() < 0.5 else "B"


@dataclass
class Judgement:
    preferred: str  # "policy", "reference" or "" (no verdict)
    policy_position: str
    raw_answer: str = ""
    explanation: str = ""
    parsed: bool = True
    guessed: bool = False
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    error: str = ""
    failure: str = ""  # a FAILURE_REASONS key when the row has no verdict, else ""
    extra: dict = field(default_factory=dict)


class ScoreJudge:
    """Prefers the summary with the higher score; a tie is a seeded coin flip (recorded as guessed)."""

    name = "score"

    def __init__(self, judge_seed: int = 0):
        self.judge_seed = judge_seed

    def scores(self, query: str, texts: list[str], row_id: str | None = None) -> list[float]:
        raise NotImplementedError

    def judge(
        self, key: str, query: str, response: str, reference: str, position: str, row_id: str | None = None
    ) -> Judgement:
        s_policy, s_reference = self.scores(query, [response, reference], row_id)
        result = Judgement(preferred="", policy_position=position)
        result.extra = {"judge_policy_score": s_policy, "judge_reference_score": s_reference}
        result.raw_answer = f"{s_policy:.6g} vs {s_reference:.6g}"
        if s_policy == s_reference:
            result.guessed = True
            result.preferred = "policy" if coin_flip(self.judge_seed, key) == position else "reference"
        else:
            result.preferred = "policy" if s_policy > s_reference else "reference"
        return result


class GoldJudge(ScoreJudge):
    """The simulated world's gold labeler (noiseless). The post is the query's POST section, or, given
    `posts` (id -> full post, `sim.evaluate.world_posts`), the full post of the row's id: a query may
    hold a post cut to fit the token budget."""

    name = "gold"

    def __init__(self, judge_seed: int = 0, posts: dict[str, str] | None = None):
        super().__init__(judge_seed)
        self.posts = posts or {}

    def scores(self, query: str, texts: list[str], row_id: str | None = None) -> list[float]:
        from rlhf_repro.sim.evaluate import post_from_query
        from rlhf_repro.sim.labeler import gold_score

        post = self.posts.get(row_id or "") or post_from_query(query)
        return [gold_score(post, t.strip()) for t in texts]


class RewardModelJudge(ScoreJudge):
    """Our RM scores query + " " + summary + EOS, as the RM stage lays pairs out."""

    name = "rm"

    def __init__(self, path: str | os.PathLike, judge_seed: int = 0, device: str = "cpu"):
        super().__init__(judge_seed)
        import torch

        from rlhf_repro.reward_model import get_reward, load_reward_model
        from rlhf_repro.tokenization import load_tokenizer

        self.torch, self.get_reward = torch, get_reward
        self.model = load_reward_model(path).to(device).eval()
        self.tokenizer = load_tokenizer(path)
        self.device = device

    def scores(self, query: str, texts: list[str], row_id: str | None = None) -> list[float]:
        torch, tok = self.torch, self.tokenizer
        pad, eos = tok.pad_token_id, tok.eos_token_id
        q = tok.encode(query.replace("[PAD]", "").strip(), add_special_tokens=False)
        seqs = [q + tok.encode(" " + t.strip(), add_special_tokens=False) + [eos] for t in texts]
        width = max(map(len, seqs))
        batch = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        with torch.no_grad():
            _, rewards, _ = self.get_reward(self.model, batch, pad)
        return rewards.float().tolist()


def judge_rows(
    judge,
    rows: list[dict],
    seed: int = 0,
    concurrency: int = 1,
    both_orders: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Judge every row (query, response, reference); returns the rows with the verdict columns added."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    for i, row in enumerate(rows, start=1):
        missing = [c for c in ("query", "response", "reference") if c not in row]
        if missing:
            raise InputError(f"row {i} lacks column(s) {', '.join(missing)}")

    def one(i: int) -> dict:
        row = rows[i]
        key = f"{i}:{row['query']}:{row['response']}"
        position = row_position(seed, key)
        extra = {"row_id": row.get("id")} if isinstance(judge, ScoreJudge) else {}
        j = judge.judge(key, row["query"], row["response"], row["reference"], position, **extra)
        out = dict(row)
        out.update(
            preferred=j.preferred,
            policy_position=j.policy_position,
            raw_answer=j.raw_answer,
            explanation=j.explanation,
            judge=getattr(judge, "model", judge.name),
            parsed=j.parsed,
            guessed=j.guessed,
            attempts=j.attempts,
            prompt_tokens=j.prompt_tokens,
            completion_tokens=j.completion_tokens,
            cost=j.cost,
            error=j.error,
            failure=j.failure,
            **j.extra,
        )
        if both_orders:
            swapped = judge.judge(
                key + ":swapped",
                row["query"],
                row["response"],
                row["reference"],
                "B" if position == "A" else "A",
                **extra,
            )
            out["preferred_swapped"] = swapped.preferred
            out["raw_answer_swapped"] = swapped.raw_answer
            out["failure_swapped"] = swapped.failure
            out["cost"] = out["cost"] + swapped.cost
        return out

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(tqdm(pool.map(one, range(len(rows))), total=len(rows), desc="judge", disable=not progress))


def summarize(judged: list[dict]) -> dict:
    """Counts, win rate over rows with a verdict, failures by reason, cost; position bias in both-orders mode.

    `n_failed` counts rows with no verdict and `failures` maps each FAILURE_REASONS key seen to its count
    (paper-mode coin flips are verdicts, counted in `n_guessed`, not failures). `n_unparsed` keeps its old
    meaning: rows marked parsed=False, request failures included."""
    verdicts = [r for r in judged if r["preferred"]]
    wins = sum(r["preferred"] == "policy" for r in verdicts)
    reasons = [r.get("failure") or ("error" if not r["preferred"] else "") for r in judged]
    failures: dict[str, int] = {}
    for reason in filter(None, reasons):
        failures[reason] = failures.get(reason, 0) + 1
    out = {
        "n": len(judged),
        "n_verdict": len(verdicts),
        "n_failed": sum(map(bool, reasons)),
        "failures": dict(sorted(failures.items())),
        "n_unparsed": sum(not r["parsed"] for r in judged),
        "n_guessed": sum(bool(r["guessed"]) for r in judged),
        "n_errors": sum(bool(r.get("error")) for r in judged),
        "win_rate": wins / len(verdicts) if verdicts else None,
        "prompt_tokens": sum(int(r["prompt_tokens"]) for r in judged),
        "completion_tokens": sum(int(r["completion_tokens"]) for r in judged),
        "cost_usd": round(sum(float(r["cost"]) for r in judged), 6),
    }
    swapped_failures = [r["failure_swapped"] for r in judged if r.get("failure_swapped")]
    if swapped_failures:
        out["n_failed_swapped"] = len(swapped_failures)
    both = [r for r in judged if r.get("preferred_swapped") and r["preferred"]]
    if both:
        # Each pair judged with the policy shown first and second: an unbiased judge names the same
        # winner both times and picks "A" half the time.
        picks_a = [(r["preferred"] == "policy") == (r["policy_position"] == "A") for r in both]
        picks_a += [(r["preferred_swapped"] == "policy") == (r["policy_position"] != "A") for r in both]
        out["n_both_orders"] = len(both)
        out["order_consistency"] = sum(r["preferred"] == r["preferred_swapped"] for r in both) / len(both)
        out["a_preferred_rate"] = sum(picks_a) / len(picks_a)
    return out
