"""The LLM judge's HTTP client: `OpenAIJudge` asks any OpenAI-compatible chat-completions server which
summary is better, under the judge protocol of `judge.py` (template, positions, verdict parsing).

Requests run concurrently and are retried on transient faults (TRANSIENT): 429 (waiting what the server's
Retry-After asks, and pausing every worker meanwhile), 5xx, timeouts, dropped connections and truncated
response bodies, with exponential backoff otherwise; every wait is capped by `max_wait`. Answers are cached
on disk (`ResponseCache`), keyed by (model, temperature, seed, prompt), in an append-only JSONL file fsynced
per record, so an interrupted run resumes without asking twice.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import random
import threading
import time
from pathlib import Path

from rlhf_repro.judge import (
    DEFAULT_MODEL,
    Judgement,
    coin_flip,
    load_template,
    parse_verdict,
    post_text,
    render,
)

# USD per 1M tokens (prompt, completion); unknown models cost 0 unless --price-* is given.
PRICES = {"gpt-3.5-turbo-0125": (0.5, 1.5), "gpt-4-0125-preview": (10.0, 30.0), "gpt-4o-mini": (0.15, 0.6)}
# Faults worth asking again: the same request may well succeed a moment later.
TRANSIENT = frozenset({"rate_limited", "server_error", "timeout", "connection", "bad_response"})


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
