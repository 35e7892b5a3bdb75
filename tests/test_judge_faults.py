"""The OpenAI judge under injected faults, against the local chat-completions server of test_judge.py.

Faults: 429 with Retry-After (seconds, milliseconds, HTTP date, over the cap), 5xx, timeouts, connections
closed or reset without an answer, bodies cut mid-JSON (with an honest or an overstated Content-Length),
non-JSON and non-completion 200s, 4xx, answers with no verdict, a server that dies after N requests, a
judge CLI killed with SIGKILL mid-run, a cache file with a torn last line, and non-UTF-8 or oversized-field
input tables. Each test checks what a researcher relies on: no row lost or duplicated, nothing paid twice,
every failure counted by reason, and a clear exit status."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from email.utils import formatdate
from types import SimpleNamespace

import pytest

from rlhf_repro import judge as J
from rlhf_repro import judge_cli
from rlhf_repro import judge_openai as JO
from rlhf_repro.io import InputError
from tests.conftest import REPO
from tests.test_judge import GOOD_A, ROWS, ChatServer, make

pytestmark = pytest.mark.unit


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


def gaps(server) -> list[float]:
    return [b - a for a, b in zip(server.times, server.times[1:])]


# --- 429 and Retry-After ------------------------------------------------------------------------------


def test_429_waits_at_least_what_retry_after_asks(server, tmp_path):
    server.script = [("status", 429, {"Retry-After": "0.4"})]
    start = time.monotonic()
    judged = J.judge_rows(make(server, tmp_path, backoff=0.001), ROWS[:1], progress=False)
    assert judged[0]["preferred"] and not judged[0]["failure"]
    assert server.requests == 2 and gaps(server)[0] >= 0.4  # backoff alone would have waited ~1 ms
    assert time.monotonic() - start >= 0.4


def test_retry_after_is_capped_by_max_wait(server, tmp_path):
    server.script = [("status", 429, {"Retry-After": "30"}), ("status", 503, {"Retry-After": "30"})]
    start = time.monotonic()
    judged = J.judge_rows(make(server, tmp_path, backoff=0.001, max_wait=0.2), ROWS[:1], progress=False)
    assert judged[0]["preferred"] and server.requests == 3
    assert all(0.2 <= g < 3 for g in gaps(server)) and time.monotonic() - start < 5


def test_retry_after_forms_seconds_milliseconds_and_http_date():
    def err(headers):
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert JO.retry_after_seconds(err({"retry-after": "0.2"})) == pytest.approx(0.2)
    assert JO.retry_after_seconds(err({"retry-after-ms": "250", "retry-after": "9"})) == pytest.approx(0.25)
    in_3s = JO.retry_after_seconds(err({"retry-after": formatdate(time.time() + 3, usegmt=True)}))
    assert 1.0 < in_3s <= 3.0
    assert JO.retry_after_seconds(err({"retry-after": "-5"})) == 0.0  # a date in the past: no wait
    assert JO.retry_after_seconds(err({"retry-after": "soon"})) is None  # garbage: fall back to backoff
    assert JO.retry_after_seconds(err({"retry-after": "nan"})) is None
    assert JO.retry_after_seconds(err({})) is None and JO.retry_after_seconds(ValueError()) is None


def test_a_429_pauses_every_worker_not_just_the_one_that_got_it(server, tmp_path):
    server.script = [("status", 429, {"Retry-After": "0.6"})]
    server.default = ("sleep", 0.1)  # slow answers: unpaused, the other worker would send 3 in the window
    judged = J.judge_rows(make(server, tmp_path, backoff=0.001), ROWS, concurrency=2, progress=False)
    assert all(r["preferred"] for r in judged) and server.requests == len(ROWS) + 1
    t429 = server.times[0]
    # The request already in flight lands right after the 429; then nobody sends until the pause is over.
    assert not [t - t429 for t in server.times[1:] if 0.25 < t - t429 < 0.55]


# --- transient faults: retried, then the row fails with its reason ------------------------------------

TRANSIENT_FAULTS = {
    "429": (429, "rate_limited"),
    "500": (500, "server_error"),
    "502": (502, "server_error"),
    "503-retry-after": (("status", 503, {"Retry-After": "0.05"}), "server_error"),
    "timeout": (("sleep", 1.5), "timeout"),
    "closed": (("close",), "connection"),
    "reset": (("reset",), "connection"),
    "json-cut": (("truncate", GOOD_A), "bad_response"),
    "body-short": (("short", GOOD_A), "connection"),
    "html-200": (("raw", "<html><body>502 Bad Gateway</body></html>"), "bad_response"),
    "200-no-choices": (("raw", json.dumps({"object": "chat.completion", "usage": {}})), "bad_response"),
}


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS)
def test_a_transient_fault_is_retried_and_the_row_still_gets_its_verdict(server, tmp_path, fault):
    action, _ = TRANSIENT_FAULTS[fault]
    server.script = [action, action]
    judged = J.judge_rows(make(server, tmp_path, timeout=0.5), ROWS[:1], progress=False)
    assert judged[0]["preferred"] == ("policy" if judged[0]["policy_position"] == "A" else "reference")
    assert not judged[0]["error"] and not judged[0]["failure"] and server.requests == 3


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS)
def test_after_the_last_retry_the_row_is_failed_with_its_reason(server, tmp_path, fault):
    action, reason = TRANSIENT_FAULTS[fault]
    server.default = action
    cache = tmp_path / "cache.jsonl"
    judged = J.judge_rows(make(server, tmp_path, timeout=0.3, max_retries=2), ROWS[:1], progress=False)
    row = judged[0]
    assert row["preferred"] == "" and row["failure"] == reason and row["error"] and server.requests == 3
    s = J.summarize(judged)
    assert s["n_failed"] == 1 and s["failures"] == {reason: 1} and s["win_rate"] is None
    assert not cache.exists() or not cache.read_text().strip()  # a failure is never cached: a rerun asks again


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_not_retried(server, tmp_path, status):
    server.default = status
    judged = J.judge_rows(make(server, tmp_path), ROWS[:2], progress=False)
    assert server.requests == 2 and all(r["failure"] == "client_error" for r in judged)
    assert J.summarize(judged)["failures"] == {"client_error": 2}


def test_a_server_echoing_the_api_key_never_gets_it_into_rows_or_cache(server, tmp_path):
    key = "sk-test-echo-4f1c2b9a"
    server.script = [("echo_auth", 401)]
    server.default = f"Comparison: your key is {key}\nPreferred: A"
    judge = JO.OpenAIJudge(base_url=server.url, api_key=key, backoff=0.01, cache=JO.ResponseCache(tmp_path / "c"))
    judged = J.judge_rows(judge, ROWS[:2], progress=False)
    assert "Incorrect API key" in judged[0]["error"] and "***" in judged[0]["error"]
    assert key not in json.dumps(judged) and key.encode() not in (tmp_path / "c").read_bytes()
    assert judged[1]["preferred"]  # the scrubbed answer still parses


# --- unparseable answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["I like the first one", "", "Comparison: both\nPreferred: neither"])
def test_unparseable_answers_fail_in_strict_mode_and_are_coin_flips_in_paper_mode(server, tmp_path, answer):
    server.default = answer
    strict = J.judge_rows(make(server, tmp_path, parse_mode="strict", strict_retries=1), ROWS[:3], progress=False)
    assert all(r["failure"] == "unparsed" and r["attempts"] == 2 and not r["error"] for r in strict)
    s = J.summarize(strict)
    assert s["n_failed"] == 3 and s["failures"] == {"unparsed": 3}
    paper = J.judge_rows(make(server, tmp_path, parse_mode="paper"), ROWS[:3], progress=False)
    s = J.summarize(paper)
    assert s["n_failed"] == 0 and all(r["preferred"] for r in paper)
    # Paper mode: no markers -> a seeded coin flip; markers but not exactly "A"/"B" -> the reference wins.
    assert s["n_guessed"] == (3 if "Preferred:" not in answer else 0)


def test_a_run_mixing_every_fault_loses_and_duplicates_no_row(server, tmp_path):
    server.script = [
        ("status", 429, {"Retry-After": "0.05"}),
        500,
        ("close",),
        ("reset",),
        ("truncate", GOOD_A),
        ("short", GOOD_A),
        ("sleep", 2.0),
        503,
    ]
    judged = J.judge_rows(make(server, tmp_path, timeout=1.0), ROWS, concurrency=4, progress=False)
    assert [r["query"] for r in judged] == [r["query"] for r in ROWS]
    s = J.summarize(judged)
    assert s["n_failed"] == 0 and s["n_verdict"] == len(ROWS) and server.requests == len(ROWS) + 8


# --- the cache and resuming ------------------------------------------------------------------------------


def test_a_torn_last_line_is_skipped_and_the_next_record_is_not_glued_to_it(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JO.ResponseCache(path)
    cache.put("k1", {"answer": "a1", "prompt_tokens": 1, "completion_tokens": 1})
    cache.put("k2", {"answer": "a2", "prompt_tokens": 1, "completion_tokens": 1})
    # A kill mid-write, cut inside a two-byte UTF-8 character.
    with open(path, "ab") as f:
        f.write(b'{"key": "k3", "answer": "caf\xc3')
    cache = JO.ResponseCache(path)
    assert set(cache.entries) == {"k1", "k2"} and cache.skipped == 1
    cache.put("k4", {"answer": "a4", "prompt_tokens": 1, "completion_tokens": 1})
    reloaded = JO.ResponseCache(path)
    assert set(reloaded.entries) == {"k1", "k2", "k4"} and reloaded.get("k4")["answer"] == "a4"
    assert path.read_bytes().endswith(b"\n") and reloaded.skipped == 1


def test_every_cached_answer_is_fsynced_before_it_is_used(server, tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(JO.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    J.judge_rows(make(server, tmp_path), ROWS[:5], concurrency=2, progress=False)
    assert len(synced) == 5 == len(JO.ResponseCache(tmp_path / "cache.jsonl").entries)


def test_a_server_that_dies_after_n_requests_then_a_rerun_asks_only_the_failed_rows(server, tmp_path):
    server.script, server.default = [GOOD_A] * 5, 500
    first = J.judge_rows(make(server, tmp_path, max_retries=1), ROWS, progress=False)
    s = J.summarize(first)
    assert s["n_verdict"] == 5 and s["failures"] == {"server_error": len(ROWS) - 5}
    answered = set(server.user_prompts()[:5])
    server.default, before = GOOD_A, server.requests
    second = J.judge_rows(make(server, tmp_path, max_retries=1), ROWS, progress=False)
    asked_again = server.user_prompts()[before:]
    assert len(asked_again) == len(ROWS) - 5 and not answered & set(asked_again)
    assert [r["query"] for r in second] == [r["query"] for r in ROWS] and J.summarize(second)["n_failed"] == 0
    assert [r["preferred"] for r in second[:5]] == [r["preferred"] for r in first[:5]]


def write_table(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["query", "response", "reference"])
        w.writeheader()
        w.writerows(rows)


def test_a_judge_killed_with_sigkill_resumes_from_its_cache(server, tmp_path):
    rows = [dict(r, query=r["query"].replace("post", f"post k{k}")) for k in range(2) for r in ROWS][:20]
    table, out, cache = tmp_path / "in.csv", tmp_path / "judged.csv", tmp_path / "cache.jsonl"
    write_table(table, rows)
    args = [sys.executable, "-m", "rlhf_repro.cli", "judge", "--input", str(table), "--out", str(out)]
    args += ["--base-url", server.url, "--model", "local", "--cache", str(cache), "--concurrency", "2"]
    args += ["--no-progress", "--backoff", "0.01"]
    env = {**os.environ, "OPENAI_API_KEY": "sk-local"}
    server.default = ("sleep", 0.3)  # slow answers, so the kill lands mid-run
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (cache.exists() and cache.read_bytes().count(b"\n") >= 4) and time.monotonic() < deadline:
            assert proc.poll() is None, "the judge ended before it could be killed"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()  # killed before the table: only the cache holds the answers so far
    with open(cache, "ab") as f:  # and as if the kill had torn the record being written
        f.write(b'{"key": "torn", "ans')
    cached = set(JO.ResponseCache(cache).entries)
    assert 4 <= len(cached) < len(rows)
    server.default, before = GOOD_A, server.requests
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    asked = server.user_prompts()[before:]
    # Nothing already cached is asked again; everything else is asked exactly once.
    assert not {JO.ResponseCache.key("local", None, None, p, 0) for p in asked} & cached
    assert len(asked) == len(set(asked)) == len(rows) - len(cached)
    with open(out, newline="", encoding="utf-8") as f:
        judged = list(csv.DictReader(f))
    assert [j["query"] for j in judged] == [r["query"] for r in rows] and all(j["preferred"] for j in judged)
    assert json.loads(r.stdout)["n_failed"] == 0 and len(JO.ResponseCache(cache).entries) == len(rows)


# --- the CLI: failures in the summary, exit status, input errors -----------------------------------------


def run_judge_cli(server, tmp_path, monkeypatch, capsys, *extra, rows=ROWS):
    table = tmp_path / "in.csv"
    write_table(table, rows)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    out = tmp_path / "judged.csv"
    argv = ["--input", str(table), "--out", str(out), "--base-url", server.url, "--model", "local"]
    argv += ["--no-progress", "--backoff", "0.001", "--max-retries", "1", "--concurrency", "1", *extra]
    code = judge_cli.main(argv)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err, json.loads((tmp_path / "judged.csv.summary.json").read_text())


def test_cli_exits_1_with_one_line_when_every_row_failed(server, tmp_path, monkeypatch, capsys):
    server.default = 500
    code, printed, err, written = run_judge_cli(server, tmp_path, monkeypatch, capsys, "--max-failed-fraction", "1")
    assert code == 1 and printed == written
    assert written["n_failed"] == len(ROWS) and written["failures"] == {"server_error": len(ROWS)}
    assert err.strip().count("\n") == 0 and "every row failed" in err and "server_error: 12" in err


def test_cli_failure_threshold_warns_below_and_exits_1_above(server, tmp_path, monkeypatch, capsys):
    server.script = [500, 500]  # one row's request and its one retry: 1 of 12 rows fails
    code, _, err, summary = run_judge_cli(server, tmp_path, monkeypatch, capsys)
    assert code == 0 and summary["n_failed"] == 1 and err.startswith("warning: 1 of 12 rows got no verdict")
    with open(tmp_path / "judged.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert sum(r["failure"] == "server_error" for r in table) == 1 and len(table) == len(ROWS)
    server.script = [500, 500]
    (tmp_path / "judged.csv.cache.jsonl").unlink()
    code, _, err, _ = run_judge_cli(server, tmp_path, monkeypatch, capsys, "--max-failed-fraction", "0")
    assert code == 1 and "over --max-failed-fraction 0" in err
    code = judge_cli.main(["--input", "x.csv", "--out", "y.csv", "--max-failed-fraction", "1.5"])
    assert code == 2


def test_cli_help_documents_the_failure_flags():
    text = judge_cli.build_parser().format_help()
    assert "--max-failed-fraction" in text and "--max-wait" in text and "Retry-After" in text
    assert "Exit status" in text


def test_non_utf8_input_names_file_line_and_column(tmp_path):
    path = tmp_path / "latin1.csv"
    # Quoted fields span physical lines: the bad byte is on physical line 6, in the response column.
    path.write_bytes(b'query,response,reference\nq1,r1,f1\n"q2\nmore",r2,f2\n"q3\n",caf\xe9,f3\n')
    with pytest.raises(InputError) as e:
        judge_cli.read_table(path, None)
    assert (e.value.line, e.value.field) == (6, "response") and "not valid UTF-8" in str(e.value)
    assert str(e.value).startswith(f"{path}:6, field 'response'")
    header = tmp_path / "h.csv"
    header.write_bytes(b"query,r\xe9ponse\nq,r\n")
    with pytest.raises(InputError) as e:
        judge_cli.read_table(header, None)
    assert e.value.line == 1 and e.value.field is None
    huge = tmp_path / "huge.csv"  # a field over the csv module's limit: one line, not a csv.Error traceback
    huge.write_bytes(b"query,response,reference\nq,r,f\nq," + b"x" * 200_000 + b",f\n")
    with pytest.raises(InputError, match="not a readable CSV") as e:
        judge_cli.read_table(huge, None)
    assert e.value.line == 3
    bom = tmp_path / "bom.csv"  # Excel's UTF-8: a byte-order mark before the header is fine
    bom.write_bytes(b"\xef\xbb\xbfquery,response,reference\nq,r,f\n")
    assert judge_cli.read_table(bom, None)[0]["query"] == "q"
    bom.write_bytes(b"\xef\xbb\xbfquery,response,reference\nq,r,caf\xe9\n")  # offsets count the mark
    with pytest.raises(InputError, match=r"at offset 35\)") as e:
        judge_cli.read_table(bom, None)
    assert (e.value.line, e.value.field) == (2, "reference")


def test_non_utf8_input_is_one_line_from_the_cli_not_a_traceback(tmp_path):
    path = tmp_path / "latin1.csv"
    data = b"query,response,reference\nq1,r1,f1\nq2,r2,caf\xe9\n"
    path.write_bytes(data)
    r = subprocess.run(
        [sys.executable, "-m", "rlhf_repro.cli", "judge", "--input", str(path), "--backend", "gold"]
        + ["--out", str(tmp_path / "o.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    where = f"{path}:3, field 'reference'"
    assert r.stderr.strip() == f"error: {where}: not valid UTF-8 (byte b'\\xe9' at offset {data.index(0xE9)}); " + (
        "save the file as UTF-8"
    )
