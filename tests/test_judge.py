"""Judges: answer parsing (paper vs strict), seeded A/B order, the OpenAI backend against a local
chat-completions server (429, 500, timeouts, malformed answers, cache), the gold and RM backends, the CLI."""

from __future__ import annotations

import csv
import json
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf_repro import judge as J
from rlhf_repro import judge_openai as JO
from tests.conftest import run_cmd

pytestmark = pytest.mark.unit

GOOD_A = "Comparison: A keeps the key facts.\nPreferred: A"
GOOD_B = "Comparison: B keeps the key facts.\nPreferred: B"


def test_paper_parsing_counts_anything_but_an_exact_letter_for_the_reference():
    assert J.parse_verdict(GOOD_A, "paper") == ("A keeps the key facts.", "A")
    assert J.parse_verdict("Comparison: x\nPreferred: A.", "paper")[1] == "other"
    assert J.parse_verdict('Comparison: x\nPreferred: "B"', "paper")[1] == "other"
    assert J.parse_verdict("I prefer A", "paper") == ("", None)  # markers missing -> coin flip upstream


def test_strict_parsing_tolerates_decoration_but_never_guesses():
    assert J.parse_verdict("Comparison: x\nPreferred: A.", "strict")[1] == "A"
    assert J.parse_verdict('Comparison: x\nPreferred: **"B"**', "strict")[1] == "B"
    assert J.parse_verdict("Comparison: x\nPreferred: both are fine", "strict")[1] is None
    assert J.parse_verdict("I prefer A", "strict")[1] is None


def test_positions_are_seeded_per_row_and_balanced():
    first = [J.row_position(3, f"row{i}") for i in range(400)]
    assert first == [J.row_position(3, f"row{i}") for i in range(400)]
    assert first != [J.row_position(4, f"row{i}") for i in range(400)]
    assert 160 < first.count("A") < 240


class ChatServer:
    """A local server speaking the chat-completions protocol. `script` is a list of actions consumed one
    per request (then `default`). An action is:

    - an answer string: a 200 with that text as the assistant's message;
    - an int status code: that error status with a JSON error body;
    - ("sleep", seconds): wait (the client times out, or gets a slow answer), then answer with `default`
      (GOOD_A when `default` is itself a sleep);
    - ("raw", body): a 200 with that body, e.g. an HTML error page from a proxy;
    - ("status", code, headers): that status with extra headers, e.g. {"Retry-After": "0.2"};
    - ("close",): close the connection without a word (the client sees a disconnect);
    - ("reset",): abort the connection with a TCP RST (connection reset by peer);
    - ("truncate", answer): a 200 whose body is cut mid-JSON (Content-Length matches the cut body);
    - ("short", answer): a 200 announcing the full body length but sending half, then closing;
    - ("echo_auth", code): a hostile error whose message quotes the Authorization header back.

    `requests` counts requests, `prompts` keeps their bodies and `auth` their Authorization headers."""

    def __init__(self, default=GOOD_A):
        self.script, self.default, self.requests, self.prompts, self.auth = [], default, 0, [], []
        self.times: list[float] = []  # time.monotonic() of each request, to check the waits between them
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def completion(self, body, text) -> bytes:
                return json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                        ],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                    }
                ).encode()

            def reply(self, status: int, payload: bytes, headers: dict | None = None, length: int | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload) if length is None else length))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.requests += 1
                    server.times.append(time.monotonic())
                    server.prompts.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                    action = server.script.pop(0) if server.script else server.default
                kind = action[0] if isinstance(action, tuple) else None
                if kind == "sleep":
                    time.sleep(action[1])
                    action = server.default if not isinstance(server.default, tuple) else GOOD_A
                    kind = action[0] if isinstance(action, tuple) else None
                if kind == "raw":
                    self.reply(200, action[1].encode())
                    return
                if kind == "close":
                    self.close_connection = True
                    return
                if kind == "reset":
                    # SO_LINGER with a zero timeout makes close() send an RST instead of a FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if kind in ("truncate", "short"):
                    full = self.completion(body, action[1])
                    cut = full[: len(full) // 2]
                    self.reply(200, cut, length=len(full) if kind == "short" else None)
                    self.close_connection = True
                    return
                if kind == "echo_auth":
                    message = f"Incorrect API key provided: {self.headers.get('Authorization')}"
                    self.reply(action[1], json.dumps({"error": {"message": message, "type": "auth"}}).encode())
                    return
                if kind == "status" or isinstance(action, int):
                    status, headers = (action[1], action[2]) if kind == "status" else (action, None)
                    self.reply(status, json.dumps({"error": {"message": "scripted", "type": "x"}}).encode(), headers)
                    return
                self.reply(200, self.completion(body, action))

        lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def user_prompts(self) -> list[str]:
        return [p["messages"][1]["content"] for p in self.prompts]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


ROWS = [
    {
        "query": f"SUBREDDIT: r/x\n\nTITLE: t{i}\n\nPOST: post {i}\n\nTL;DR:",
        "response": f" policy {i}",
        "reference": f" ref {i}",
    }
    for i in range(12)
]


def make(server, tmp_path, **kw):
    kw.setdefault("cache", JO.ResponseCache(tmp_path / "cache.jsonl"))
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 2.0)
    return JO.OpenAIJudge(base_url=server.url, api_key="k", **kw)


def test_openai_judge_always_a_wins_where_the_policy_was_a_and_costs_are_counted(server, tmp_path):
    judged = J.judge_rows(make(server, tmp_path), ROWS, seed=0, concurrency=4, progress=False)
    for r in judged:
        assert r["preferred"] == ("policy" if r["policy_position"] == "A" else "reference")
    s = J.summarize(judged)
    assert s["n"] == 12 and s["n_verdict"] == 12 and s["prompt_tokens"] == 1200
    assert s["cost_usd"] == pytest.approx(12 * (100 * 0.5 + 10 * 1.5) / 1e6)  # gpt-3.5-turbo-0125 prices
    prompts = [p["messages"][1]["content"] for p in server.prompts]
    assert any("post 0" in p for p in prompts) and not any("TL;DR:" in p for p in prompts)
    assert all("temperature" not in p and "seed" not in p for p in server.prompts)  # unset, as the reference


def test_retries_on_429_500_and_timeouts_then_the_cache_pays_nothing_twice(server, tmp_path):
    server.script = [429, 500, ("sleep", 3.0)]
    judged = J.judge_rows(make(server, tmp_path), ROWS[:2], seed=0, concurrency=1, progress=False)
    assert all(r["preferred"] and not r["error"] for r in judged)
    assert server.requests == 5  # 3 faults + 2 answers
    before = server.requests
    again = J.judge_rows(make(server, tmp_path), ROWS[:2], seed=0, concurrency=1, progress=False)
    assert server.requests == before and [r["preferred"] for r in again] == [r["preferred"] for r in judged]


def test_errors_after_the_last_retry_are_reported_per_row(server, tmp_path):
    server.script = [503] * 10
    judged = J.judge_rows(make(server, tmp_path, max_retries=2), ROWS[:1], seed=0, progress=False)
    assert judged[0]["preferred"] == "" and "InternalServerError" in judged[0]["error"]
    assert J.summarize(judged)["n_errors"] == 1 and server.requests == 3


def test_malformed_answers_paper_vs_strict(server, tmp_path):
    server.default = "Comparison: fine\nPreferred: A."  # not exactly "A"
    paper = J.judge_rows(make(server, tmp_path, parse_mode="paper"), ROWS[:6], seed=0, progress=False)
    assert all(r["preferred"] == "reference" for r in paper)  # the reference's rule
    server.default = "I like the first one"  # no markers
    strict = J.judge_rows(
        make(server, tmp_path, parse_mode="strict", cache=JO.ResponseCache(None)), ROWS[:2], seed=0, progress=False
    )
    assert all(r["preferred"] == "" and not r["parsed"] and r["attempts"] == 3 for r in strict)
    guessed = J.judge_rows(
        make(server, tmp_path, parse_mode="paper", cache=JO.ResponseCache(None)), ROWS, seed=0, progress=False
    )
    assert all(r["guessed"] and r["preferred"] in ("policy", "reference") for r in guessed)
    again = J.judge_rows(
        make(server, tmp_path, parse_mode="paper", cache=JO.ResponseCache(None)), ROWS, seed=0, progress=False
    )
    assert [r["preferred"] for r in again] == [r["preferred"] for r in guessed]  # seeded coin flips


def test_both_orders_reveals_a_judge_that_always_picks_a(server, tmp_path):
    judged = J.judge_rows(make(server, tmp_path), ROWS, seed=0, both_orders=True, progress=False)
    s = J.summarize(judged)
    assert s["a_preferred_rate"] == 1.0 and s["order_consistency"] == 0.0


def test_gold_judge_prefers_the_summary_with_more_true_facts():
    query = "SUBREDDIT: r/x\n\nTITLE: t\n\nPOST: I (24 M) have been with my girlfriend (23 F) for 2 years.\n\nTL;DR:"
    rows = [
        {"query": query, "response": " I (24 M) and my girlfriend (23 F) of 2 years.", "reference": " I (31 M)."},
        {"query": query, "response": " I (51 M).", "reference": " I (24 M) and my girlfriend (23 F) of 2 years."},
    ]
    judged = J.judge_rows(J.GoldJudge(), rows, progress=False)
    assert [r["preferred"] for r in judged] == ["policy", "reference"]
    assert judged[0]["judge_policy_score"] > judged[0]["judge_reference_score"]


def test_rm_judge_matches_the_rm_scores(tiny_reward_model):
    rows = ROWS[:4]
    judge = J.RewardModelJudge(tiny_reward_model)
    judged = J.judge_rows(judge, rows, progress=False)
    for row, r in zip(rows, judged):
        s_p, s_r = judge.scores(row["query"], [row["response"], row["reference"]])
        assert r["preferred"] == ("policy" if s_p > s_r else "reference")


def test_judge_cli_writes_the_judged_table_and_summary(tmp_path):
    table = tmp_path / "in.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["query", "response", "reference", "score"])
        w.writeheader()
        for r in ROWS[:5]:
            w.writerow({**r, "score": 1.0})
    out = tmp_path / "judged.csv"
    r = run_cmd(
        [
            sys.executable,
            "-m",
            "rlhf_repro.cli",
            "judge",
            "--input",
            str(table),
            "--backend",
            "gold",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as f:
        judged = list(csv.DictReader(f))
    assert len(judged) == 5 and {"score", "preferred", "policy_position", "raw_answer", "judge"} <= set(judged[0])
    assert json.loads((tmp_path / "judged.csv.summary.json").read_text())["n"] == 5
    bad = tmp_path / "bad.csv"
    bad.write_text("query,response\nq,r\n")
    r = run_cmd(
        [sys.executable, "-m", "rlhf_repro.cli", "judge", "--input", str(bad), "--backend", "gold", "--out", str(out)]
    )
    assert r.returncode == 2 and "bad.csv" in r.stderr and "reference" in r.stderr


def test_pairs_mode_reports_judge_human_agreement_and_exports_ai_labels(small_world, tmp_path):
    out, export = tmp_path / "pairs.csv", tmp_path / "ai"
    r = run_cmd(
        [
            sys.executable,
            "-m",
            "rlhf_repro.cli",
            "judge",
            "--pairs",
            str(small_world / "comparisons"),
            "--backend",
            "gold",
            "--out",
            str(out),
            "--export-comparisons",
            str(export),
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    world = json.loads((small_world / "world.json").read_text())
    n_valid = world["sizes"]["comparisons/valid1"] + world["sizes"]["comparisons/valid2"]
    assert summary["n"] == n_valid
    # The noiseless gold judge agrees with the noisy human labels as a by-hand count over the world's
    # validation comparisons says: every untied pair as the gold scores order it, a tie by the judge's
    # seeded coin. The world's own figure counts a tie as half, so the two differ by at most half the
    # share of ties.
    from rlhf_repro.io import read_jsonl
    from rlhf_repro.sim.labeler import gold_score

    with open(out, newline="") as f:
        verdicts = {r["id"]: r["preferred"] for r in csv.DictReader(f)}
    hits, ties = [], 0
    for name in ("valid1", "valid2"):
        for _, c in read_jsonl(small_world / "comparisons" / f"{name}.jsonl"):
            body = c["info"].get("post") or c["info"]["article"]
            s0, s1 = (gold_score(body, x["text"].lstrip()) for x in c["summaries"])
            verdict = verdicts[c["info"]["id"]]
            if s0 == s1:
                ties += 1
            else:
                assert verdict == ("policy" if s0 > s1 else "reference"), c["info"]["id"]
            hits.append((0 if verdict == "policy" else 1) == c["choice"])
    assert len(hits) == n_valid
    assert summary["agreement"] == pytest.approx(sum(hits) / len(hits), abs=1e-9)
    # valid1/valid2 hold the TL;DR and the news pairs; the world reports them apart.
    parts = [world[k]["all"] for k in ("gold_accuracy_validation", "gold_accuracy_validation_cnndm")]
    assert sum(p["n"] for p in parts) == n_valid
    world_acc = sum(p["accuracy"] * p["n"] for p in parts) / n_valid
    assert abs(summary["agreement"] - world_acc) <= 0.5 * ties / n_valid + 1e-4
    assert any(k.startswith("agreement/confidence/") for k in summary)
    from rlhf_repro.sources import load_comparisons

    ai = load_comparisons(export)["validation"]
    with open(out, newline="") as f:
        judged = list(csv.DictReader(f))
    assert len(ai) == len(judged) and all(c["worker"] == "judge:gold" for c in ai)
    assert [c["choice"] for c in ai] == [0 if j["preferred"] == "policy" else 1 for j in judged]
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", "judge", "--backend", "gold", "--out", str(out)])
    assert r.returncode == 2 and "--input" in r.stderr


def test_against_judges_one_policy_against_another_on_shared_queries(tmp_path):
    from rlhf_repro.judge_cli import align_against

    mine = [dict(r) for r in ROWS[:4]] + [dict(ROWS[0])]  # a duplicated query is judged once
    theirs = [
        {"query": r["query"], "response": f" sft {i}", "reference": r["reference"]} for i, r in enumerate(ROWS[1:6])
    ]
    rows = align_against(mine, theirs, "sft.csv")
    assert [r["reference"] for r in rows] == [" sft 0", " sft 1", " sft 2"]  # ROWS[1..3]; ROWS[0] not shared
    assert rows[0]["human_reference"] == ROWS[1]["reference"]
    from rlhf_repro.io import InputError

    with pytest.raises(InputError, match="no query in common"):
        align_against(mine, [{"query": "other", "response": "x", "reference": "y"}], "sft.csv")


def test_temperature_seed_and_a_custom_template_reach_the_request(server, tmp_path):
    template = tmp_path / "t.txt"
    template.write_text("MY TEMPLATE {post} || {summary_a} || {summary_b}")
    judge = make(server, tmp_path, temperature=0.3, seed=7, template=J.load_template(template))
    J.judge_rows(judge, ROWS[:1], progress=False)
    body = server.prompts[0]
    assert body["temperature"] == 0.3 and body["seed"] == 7
    assert body["messages"][1]["content"].startswith("MY TEMPLATE SUBREDDIT: r/x")
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholders")
    from rlhf_repro.io import InputError

    with pytest.raises(InputError, match="placeholder {post}"):
        J.load_template(bad)


def test_gold_judge_reads_the_full_post_by_id_when_given_the_world():
    full = "I (24 M) have been with my girlfriend (23 F) for 2 years.\n\nShe forgot my birthday."
    query = "SUBREDDIT: r/x\n\nTITLE: t\n\nPOST: I (24 M) have been with my girlfriend (23 F).\n\nTL;DR:"  # cut
    summary = " I (24 M) and my girlfriend (23 F) of 2 years."
    cut = J.GoldJudge().scores(query, [summary])[0]
    whole = J.GoldJudge(posts={"t3_x": full}).scores(query, [summary], "t3_x")[0]
    assert whole == cut + 1.0  # the duration is covered only in the full post
    row = {"id": "t3_x", "query": query, "response": summary, "reference": " I (24 M)."}
    judged = J.judge_rows(J.GoldJudge(posts={"t3_x": full}), [row], progress=False)
    assert judged[0]["judge_policy_score"] == whole


def test_judge_cli_passes_server_key_prices_and_cache_to_the_backend(server, tmp_path):
    table = tmp_path / "in.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["query", "response", "reference"])
        w.writeheader()
        w.writerows(ROWS[:3])
    out, cache = tmp_path / "judged.csv", tmp_path / "c.jsonl"
    args = ["judge", "--input", str(table), "--out", str(out), "--base-url", server.url, "--api-key-env", "MY_KEY"]
    args += ["--model", "local-model", "--price-prompt", "1", "--price-completion", "2", "--cache", str(cache)]
    args += ["--concurrency", "2", "--no-progress"]
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", *args], env={"MY_KEY": "secret"})
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["judge"] == "local-model" and summary["cost_usd"] == pytest.approx(3 * (100 * 1 + 10 * 2) / 1e6)
    assert server.requests == 3 and cache.exists() and all(p["model"] == "local-model" for p in server.prompts)
    assert server.auth == ["Bearer secret"] * 3  # the key from --api-key-env
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", *args], env={"MY_KEY": "secret"})
    assert r.returncode == 0 and server.requests == 3  # every answer came from --cache
