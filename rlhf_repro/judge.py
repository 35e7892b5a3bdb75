"""Pairwise judges of a policy's summaries against the human references (n-plus-details §4.2).

One interface, three backends:
- `OpenAIJudge`: any OpenAI-compatible chat-completions server (`openai` package; base URL, key and
  model from flags or the environment, so vLLM works too). Default model gpt-3.5-turbo-0125.
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

import email.utils
import hashlib
import json
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_repro.io import InputError

TEMPLATE_DIR = Path(__file__).parent / "judge_templates"
DEFAULT_TEMPLATE = TEMPLATE_DIR / "tldr.txt"
DEFAULT_MODEL = "gpt-3.5-turbo-0125"
# USD per 1M tokens (prompt, completion); unknown models cost 0 unless --price-* is given.
PRICES = {"gpt-3.5-turbo-0125": (0.5, 1.5), "gpt-4-0125-preview": (10.0, 30.0), "gpt-4o-mini": (0.15, 0.6)}

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
# Faults worth asking again: the same request may well succeed a moment later.
TRANSIENT = frozenset({"rate_limited", "server_error", "timeout", "connection", "bad_response"})


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


class JudgeRequestError(RuntimeError):
    """A request that failed for good (a fault not worth retrying, or the last retry spent)."""

    def __init__(self, reason: str, message: str, requests: int):
        super().__init__(message)
        self.reason, self.requests = reason, requests


def classify_failure(e: BaseException) -> str:
    """The FAILURE_REASONS key of an exception raised by a chat-completions request."""
    import openai

    if isinstance(e, openai.RateLimitError):
        return "rate_limited"
    if isinstance(e, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return "timeout"
    if isinstance(e, openai.APIConnectionError):
        return "connection"
    if isinstance(e, openai.APIStatusError):
        return "server_error" if e.status_code >= 500 else "client_error"
    # A 200 whose body is cut mid-JSON raises json.JSONDecodeError (a ValueError) from the client; one
    # that is JSON but not a completion fails when its fields are read.
    if isinstance(e, (openai.APIResponseValidationError, ValueError, TypeError, AttributeError, IndexError, KeyError)):
        return "bad_response"
    return "error"


def retry_after_seconds(e: BaseException) -> float | None:
    """The wait the server asked for in Retry-After-Ms / Retry-After (seconds or an HTTP date), if any."""
    headers = getattr(getattr(e, "response", None), "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:  # the HTTP-date form: "Wed, 21 Oct 2015 07:28:00 GMT"
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError, IndexError):
                continue
        if math.isnan(seconds):
            continue
        return max(0.0, seconds)  # an infinite wait is capped by max_wait downstream
    return None


def describe_error(e: BaseException) -> str:
    """One line: the exception and, for the client's terse "Connection error.", its underlying cause."""
    text = f"{type(e).__name__}: {e}"
    cause = e.__cause__ or e.__context__
    if cause is not None and type(e).__name__ in ("APIConnectionError", "APITimeoutError"):
        text += f" ({type(cause).__name__}: {cause})"
    return " ".join(text.split())


class ResponseCache:
    """Append-only JSONL cache: key -> response record.

    Safe to kill at any moment: each record is one write, flushed and fsynced before the answer is used,
    so a cached answer survives a crash of the process or the machine. A record torn by a kill mid-write
    is skipped on load, and the next append first ends the torn line, so it is never glued onto it."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.skipped = 0  # lines that could not be read back (torn or corrupt)
        if self.path and self.path.exists():
            # Bytes, not text: a torn line may end inside a multi-byte character.
            for line in self.path.read_bytes().splitlines():
                try:
                    record = json.loads(line)
                    self.entries[record["key"]] = record
                except (ValueError, TypeError, KeyError):
                    self.skipped += bool(line.strip())

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, record: dict) -> None:
        with self.lock:
            self.entries[key] = {"key": key, **record}
            if not self.path:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = (json.dumps(self.entries[key]) + "\n").encode()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # end a line torn by a kill, or this record would be lost with it
                while data:  # one write in practice: O_APPEND keeps concurrent appenders apart
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)


class OpenAIJudge:
    """Chat-completions judge. `ask` returns (answer text, prompt tokens, completion tokens, cached) or
    raises JudgeRequestError; `judge` never raises for a request: a failed row carries its reason.

    Retries: `max_retries` more requests after a transient fault (TRANSIENT). A 429 or 5xx with a
    Retry-After header waits what the server asks; other faults back off exponentially from `backoff`
    seconds with jitter. Either wait is capped at `max_wait` seconds. After a 429 every worker thread
    holds off until the wait is over, so a concurrent run does not keep hammering a rate-limited server."""

    name = "openai"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        template: str | None = None,
        parse_mode: str = "paper",
        strict_retries: int = 2,
        max_retries: int = 6,
        timeout: float = 60.0,
        backoff: float = 1.0,
        cache: ResponseCache | None = None,
        prices: tuple[float, float] | None = None,
        judge_seed: int = 0,
        max_wait: float = 60.0,
    ):
        from openai import OpenAI

        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "not-set"
        self.client = OpenAI(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=api_key,
            max_retries=0,  # our own loop: it honours Retry-After, classifies failures and caps waits
            timeout=timeout,
        )
        # Kept only to scrub it from what the server sends back (error messages, answers): a proxy or a
        # 401 that quotes the key must not carry it into the judged table, the cache or the logs.
        self._secret = api_key if len(api_key) >= 8 else None
        self.model, self.temperature, self.seed = model, temperature, seed
        self.template = template or load_template()
        self.parse_mode, self.strict_retries = parse_mode, strict_retries
        self.max_retries, self.backoff, self.max_wait = max_retries, backoff, max_wait
        self.cache = cache if cache is not None else ResponseCache(None)
        self.prices = prices or PRICES.get(model, (0.0, 0.0))
        self.judge_seed = judge_seed
        self.requests = 0
        self._lock = threading.Lock()
        self._resume_at = 0.0  # time.monotonic() before which no worker sends (set by a 429)

    def scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret and text else text

    def _wait_turn(self) -> None:
        """Hold off while a rate limit pause set by any worker lasts."""
        while (delay := self._resume_at - time.monotonic()) > 0:
            time.sleep(delay)

    def _backoff(self, retry: int, e: BaseException, reason: str) -> float:
        """Seconds to wait before the next try: the server's Retry-After if it sent one, else exponential
        backoff with jitter; capped at max_wait either way."""
        asked = retry_after_seconds(e)
        if asked is not None:
            wait = asked * (1.0 + 0.1 * random.random())  # jitter upward only: never sooner than asked
        else:
            wait = self.backoff * 2**retry * (0.5 + random.random())
        wait = min(wait, self.max_wait)
        if reason == "rate_limited":
            with self._lock:
                self._resume_at = max(self._resume_at, time.monotonic() + wait)
        return wait

    def ask(self, prompt: str, attempt: int = 0) -> tuple[str, int, int, bool]:
        key = ResponseCache.key(self.model, self.temperature, self.seed, prompt, attempt)
        hit = self.cache.get(key)
        if hit is not None:
            return hit["answer"], hit["prompt_tokens"], hit["completion_tokens"], True
        kwargs = {"temperature": self.temperature} if self.temperature is not None else {}
        if self.seed is not None:
            kwargs["seed"] = self.seed
        messages = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ]
        for retry in range(self.max_retries + 1):
            self._wait_turn()
            with self._lock:
                self.requests += 1
            try:
                out = self.client.chat.completions.create(model=self.model, messages=messages, **kwargs)
                answer = out.choices[0].message.content or ""  # a body without choices: bad_response
                usage = out.usage
                break
            except Exception as e:  # noqa: BLE001 - classified: transient faults are retried, others reported
                reason = classify_failure(e)
                if reason not in TRANSIENT or retry == self.max_retries:
                    raise JudgeRequestError(reason, self.scrub(describe_error(e))[:300], retry + 1) from None
                time.sleep(self._backoff(retry, e, reason))
        record = {
            "answer": self.scrub(answer),
            "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        }
        self.cache.put(key, record)
        return record["answer"], record["prompt_tokens"], record["completion_tokens"], False

    def judge(self, key: str, query: str, response: str, reference: str, position: str) -> Judgement:
        a, b = (response, reference) if position == "A" else (reference, response)
        prompt = render(self.template, post_text(query), a.strip(), b.strip())
        result = Judgement(preferred="", policy_position=position)
        tries = 1 + (self.strict_retries if self.parse_mode == "strict" else 0)
        for attempt in range(tries):
            try:
                answer, p_tok, c_tok, _ = self.ask(prompt, attempt)
            except JudgeRequestError as e:  # reported per row, the run goes on
                result.error, result.failure, result.parsed = str(e), e.reason, False
                return result
            except Exception as e:  # noqa: BLE001 - a bug here must not lose the rows judged so far
                result.error = self.scrub(describe_error(e))[:300]
                result.failure, result.parsed = "error", False
                return result
            result.attempts += 1
            result.prompt_tokens += p_tok
            result.completion_tokens += c_tok
            result.raw_answer = answer
            explanation, verdict = parse_verdict(answer, self.parse_mode)
            result.explanation = explanation
            if verdict is not None:
                break
        result.cost = (result.prompt_tokens * self.prices[0] + result.completion_tokens * self.prices[1]) / 1e6
        if verdict is None and self.parse_mode == "paper":
            verdict, result.guessed = coin_flip(self.judge_seed, key), True  # the reference's random choice
        if verdict is None:
            result.parsed, result.failure = False, "unparsed"
            return result
        result.preferred = "policy" if verdict == position else "reference"
        return result


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
