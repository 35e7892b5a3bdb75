"""Issue 19: every input reader against its declared schema (rlhf_repro/readers.py), the text rules, and
property-based fuzzing of each reader and of every command that takes a file.

The contract each case asserts: exit 0 with correct output, or exit 2 with one line naming the file, the
line (or record) and the field; never a traceback; nothing written to the output location after a
refusal. Fuzzing: hypothesis draws malformed variants of valid inputs (type swaps, missing, extra and
duplicated fields and columns, non-finite numbers, bad bytes, truncation, empty files); the default tier
runs FUZZ_EXAMPLES cases per reader and per command, the slow tier SLOW_FUZZ_EXAMPLES.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REAL_TOKENIZER, cli

pytestmark = pytest.mark.smoke

POST = {"id": "a", "subreddit": "relationships", "title": "A title", "post": "A post.\n\nMore of it.", "summary": "s"}


# --- the text rules: special-token strings inside user text ---------------------------------------------------


def _posts_dir(root: Path, rows: list[dict]) -> Path:
    src = root / "posts"
    src.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        lines = [json.dumps({**r, "id": f"{split}{i}"}) for i, r in enumerate(rows)]
        (src / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return src


def _build(tmp_path: Path, src: Path, *flags: str) -> Path:
    import tyro

    from experiments.build_dataset import Args, main

    out = tmp_path / "built"
    argv = ["--tldr-source", str(src), "--tokenizer", str(REAL_TOKENIZER), "--output-dir", str(out)]
    main(tyro.cli(Args, args=[*argv, "--no-check-length-correctness", "--no-progress", *flags]))
    return out


@pytest.mark.parametrize("mode", ["text", "special"])
def test_special_token_strings_in_user_text(tmp_path, mode):
    """By default a special token's string in a post or summary is text: the processed ids hold EOS only at
    the end of each summary and PAD only as padding, and the decoded query gives back the post. With
    `--special-tokens-in-text special` (the reference's tokenizer call) they become the special ids."""
    from datasets import load_from_disk

    rows = [
        {**POST, "post": "I wrote [PAD] here and <|endoftext|> there.\n\nThe end.", "summary": "s <|endoftext|> t"},
        POST,
    ]
    data = {
        "sft": load_from_disk(
            str(_build(tmp_path, _posts_dir(tmp_path, rows), "--special-tokens-in-text", mode) / "sft")
        )
    }
    from rlhf_repro.tokenization import load_tokenizer

    tok = load_tokenizer(REAL_TOKENIZER)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    row = data["sft"]["train"][0]
    query = row["query_token"][len(row["query_token"]) - row["query_token_len"] :]  # the unpadded query (left-padded)
    reference = row["reference_response_token"][: row["reference_response_token_len"]]
    assert reference[-1] == eos  # the appended EOS is always the special token
    if mode == "text":
        assert pad not in query and eos not in query
        assert eos not in reference[:-1] and pad not in reference
        assert "[PAD] here and <|endoftext|> there." in row["query"]  # the decoded query is the post
    else:
        assert pad in query and eos in query and eos in reference[:-1]
    # A post with no special-token string tokenizes the same either way.
    plain = data["sft"]["train"][1]
    assert tok.decode(plain["reference_response_token"][: plain["reference_response_token_len"]]).endswith(
        "s<|endoftext|>"
    )


# --- JSONL ---------------------------------------------------------------------------------------------------


def _jsonl(tmp_path, data: bytes, name="x.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_jsonl_accepts_bom_crlf_and_no_final_newline(tmp_path):
    from rlhf_repro.readers import read_jsonl

    p = _jsonl(tmp_path, b'\xef\xbb\xbf{"a": 1}\r\n\r\n{"b": 2}')
    assert list(read_jsonl(p)) == [(1, {"a": 1}), (3, {"b": 2})]


@pytest.mark.parametrize(
    "data, line, words",
    [
        (b'{"a": 1}\n{"a": NaN}\n', 2, "NaN is not a number JSON allows"),
        (b'{"a": Infinity}', 1, "Infinity is not a number"),
        (b'{"a": 1, "a": 2}', 1, "key 'a' appears twice"),
        (b'{"a": {"b": 1, "b": 1}}', 1, "key 'b' appears twice"),
        (b"[1, 2]", 1, "expected a JSON object, got list"),
        (b'{"a": "caf\xe9"}', 1, "not valid UTF-8"),
        (b'{"a": ', 1, "not valid JSON"),
    ],
)
def test_jsonl_refusals_name_file_and_line(tmp_path, data, line, words):
    from rlhf_repro.io import InputError
    from rlhf_repro.readers import read_jsonl

    p = _jsonl(tmp_path, data)
    with pytest.raises(InputError) as e:
        list(read_jsonl(p))
    assert str(e.value).startswith(f"{p}:{line}") and words in str(e.value)


def test_comparison_fields_of_the_wrong_json_type_are_refused_before_pyarrow(tmp_path):
    """Fields the builder used to pass straight to pyarrow (or through str()) are checked by the schema."""
    from rlhf_repro.io import InputError
    from rlhf_repro.sources import load_comparisons

    good = {
        "info": {"id": "x", "post": "p", "title": "t", "subreddit": "s"},
        "summaries": [{"text": " a", "policy": "sup1", "note": None}, {"text": " b", "policy": "ref"}],
        "choice": 0,
        "worker": "w",
        "batch": "batch3",
        "split": "train",
        "extra": {"confidence": 3},
    }
    cases = [
        (("worker",), ["w"], "worker", "expected a string, got list"),
        (("batch",), 7, "batch", "expected a string, got int"),
        (("split",), {"a": 1}, "split", "expected a string, got dict"),
        (("summaries", 0, "policy"), 3, "summaries[0].policy", "expected a string, got int"),
        (("summaries", 1, "note"), ["n"], "summaries[1].note", "expected a string, got list"),
        (("info", "site"), 1.5, "info.site", "expected a string, got float"),
        (("info", "id"), [1], "info.id", "got list"),
    ]
    for path, value, field, words in cases:
        row = json.loads(json.dumps(good))
        target = row
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        d = tmp_path / field.replace("[", "_").replace("]", "").replace(".", "_")
        d.mkdir()
        (d / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(InputError) as e:
            load_comparisons(d)
        assert str(e.value) == f"{d / 'train.jsonl'}:2, field '{field}': {words}" or (
            str(e.value).startswith(f"{d / 'train.jsonl'}:2, field '{field}'") and words in str(e.value)
        ), str(e.value)
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "train.jsonl").write_text(json.dumps(good) + "\n")
    assert len(load_comparisons(tmp_path / "ok")["train"]) == 1


# --- CSV tables ------------------------------------------------------------------------------------------------


def _csv(tmp_path, data: bytes | str, name="t.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def test_csv_accepts_bom_crlf_no_final_newline_and_quoted_newlines(tmp_path):
    from rlhf_repro.readers import read_table

    p = _csv(tmp_path, b'\xef\xbb\xbfquery,response,reference,score\r\nq,"two\r\nlines",f,1.5\r\nq2,r2,f2,')
    rows = read_table(p, ("query", "response", "reference"))
    assert [r["response"] for r in rows] == ["two\r\nlines", "r2"] and rows.lines == [2, 4]
    assert rows[1]["score"] == ""  # an empty number is allowed (a row without a score)


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ("", 1, None, "empty file"),
        ("query,response,reference\n", 1, None, "a header and no rows"),
        ("query,response,response,reference\nq,a,b,f\n", 1, "response", "appears twice in the header"),
        ("query,response,reference\nq,r\n", 2, "reference", "2 fields, the header has 3"),
        ("query,response,reference\nq,r,f\nq,r,f,extra\n", 3, None, "4 fields, the header has 3"),
        ("query,response\nq,r\n", 1, "reference", "missing column(s) reference"),
        ("query,response,reference,score\nq,r,f,nan\n", 2, "score", "expected a finite number, got 'nan'"),
        ("query,response,reference,score\nq,r,f,inf\n", 2, "score", "finite number"),
        ("query,response,reference,score\nq,r,f,1e400\n", 2, "score", "finite number"),
        ("query,response,reference,score\nq,r,f,abc\n", 2, "score", "expected a number, got 'abc'"),
        ("query,response,reference,preferred\nq,r,f,maybe\n", 2, "preferred", "must be one of"),
        ("query,response,reference,response_token_len\nq,r,f,3.5\n", 2, "response_token_len", "an integer"),
        ("query,response,reference,eos_present\nq,r,f,yes\n", 2, "eos_present", "True or False"),
        (b"query,response,reference\nq,r,caf\xe9\n", 2, "reference", "not valid UTF-8"),
    ],
)
def test_csv_refusals_name_file_line_and_column(tmp_path, text, line, field, words):
    from rlhf_repro.io import InputError
    from rlhf_repro.readers import read_table

    p = _csv(tmp_path, text)
    with pytest.raises(InputError) as e:
        read_table(p, ("query", "response", "reference"))
    where = f"{p}:{line}" + (f", field '{field}'" if field else "")
    assert str(e.value).startswith(where + ":") and words in str(e.value), str(e.value)


# --- every command that reads a table: the same input, the same answer ---------------------------------------

BAD_TABLES = {
    "duplicated column": ("preferred,query,response,reference,reference\npolicy,q,r,f,g\n", "appears twice"),
    "short row": ("preferred,query,response,reference\npolicy,q,r\n", "3 fields, the header has 4"),
    "long row": ("preferred,query,response,reference\npolicy,q,r,f,x\n", "5 fields, the header has 4"),
    "header only": ("preferred,query,response,reference\n", "a header and no rows"),
    "non-finite score": ("preferred,query,response,reference,score\npolicy,q,r,f,NaN\n", "finite number"),
}


def _table_commands(path: Path, out: Path) -> dict[str, list[str]]:
    judged = ["--judged", str(path)]
    return {
        "judge": ["judge", "--input", str(path), "--backend", "gold", "--out", str(out / "judged.csv")],
        "sim score-table": ["sim", "score-table", str(path), "--out", str(out / "scored.csv")],
        "analyze win-rate": ["analyze", "win-rate", *judged, "--out", str(out / "w.json")],
        "analyze length-control": ["analyze", "length-control", *judged, "--length-by", "char"],
        "analyze rouge": ["analyze", "rouge", "--table", str(path)],
    }


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_every_table_command_refuses_the_same_input_with_the_same_message(tmp_path, case):
    text, words = BAD_TABLES[case]
    path = _csv(tmp_path, text)
    out = tmp_path / "out"
    messages = set()
    for name, argv in _table_commands(path, out).items():
        r = cli(*argv)
        assert r.returncode == 2, (name, r.stdout[-500:], r.stderr[-2000:])
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
        assert words in r.stderr and str(path) in r.stderr, (name, r.stderr)
        messages.add(r.stderr.strip())
        assert not out.exists(), name  # nothing written after a refusal
    assert len(messages) == 1, messages


def test_output_locations_of_the_wrong_kind_are_refused_before_any_work(tmp_path):
    table = _csv(tmp_path, "preferred,query,response,reference\npolicy,q,r,f\n")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["judge", "--input", str(table), "--backend", "gold", "--out", str(tmp_path / "a_dir")], "is a directory"),
        (["analyze", "win-rate", "--judged", str(table), "--out", str(tmp_path / "a_dir")], "is a directory"),
        (["analyze", "win-rate", "--judged", str(table), "--out", str(tmp_path / "a_file" / "w.json")], "is a file"),
        (["sim", "score-table", str(table), "--out", str(tmp_path / "a_dir")], "is a directory"),
    ]
    for argv, words in cases:
        r = cli(*argv)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
    assert (tmp_path / "a_file").read_text() == "x" and not any((tmp_path / "a_dir").iterdir())


def test_a_damaged_tokenizer_file_is_one_clear_error(tmp_path):
    from rlhf_repro.io import InputError
    from rlhf_repro.tokenization import load_tokenizer

    for name, data in (("cut.json", REAL_TOKENIZER.read_bytes()[:5000]), ("other.json", b'{"version": 1}')):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as e:
            load_tokenizer(path)
        assert str(e.value).startswith(str(path)) and "not a readable tokenizer" in str(e.value)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(b"{not json")
    with pytest.raises(InputError, match="not a readable tokenizer"):
        load_tokenizer(d)


def test_a_table_with_no_verdict_is_refused_not_scored_as_n_0(tmp_path):
    table = _csv(tmp_path, "preferred,query,response,reference\n,q,r,f\n,q2,r2,f2\n")
    r = cli("analyze", "win-rate", "--judged", str(table))
    assert r.returncode == 2 and "no row has a verdict" in r.stderr, r.stderr


def test_analysis_output_is_json_without_nan(tmp_path):
    from analysis.cli import finite_json

    assert json.dumps(finite_json({"a": float("nan"), "b": [1.0, float("inf")], "c": 2})) == (
        '{"a": null, "b": [1.0, null], "c": 2}'
    )


# --- property-based fuzzing -------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_EXAMPLES = 150  # per in-process reader, default tier
FUZZ_CLI_EXAMPLES = 6  # per command (each a process), default tier
SLOW_FUZZ_EXAMPLES = 2000
SLOW_FUZZ_CLI_EXAMPLES = 30  # each example is a few command processes: 80 took ~25 min per group in CI
FUZZ = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
COMPARISON = {
    "info": {"id": "x1", "post": "A post.", "title": "t", "subreddit": "s"},
    "summaries": [{"text": " a", "policy": "sup1", "note": None}, {"text": " b", "policy": "ref", "note": None}],
    "choice": 1,
    "worker": "w",
    "batch": "batch3",
    "split": "train",
    "extra": {"confidence": 4},
}


def _paths_of(obj, prefix=()):
    """Every (path to a value) in a nested dict/list, so a mutation can reach any field."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths_of(v, prefix + (i,))


@st.composite
def mutated_json_line(draw, base: dict) -> bytes:
    """A JSON line of `base` with one change: a value of another type, a field gone or added, a key given
    twice, a NaN literal, a truncation, bytes that are not UTF-8, or no change at all."""
    row = json.loads(json.dumps(base))
    kind = draw(st.sampled_from(["swap", "drop", "add", "duplicate", "nan", "truncate", "bytes", "none"]))
    paths = [p for p in _paths_of(row) if p]
    path = draw(st.sampled_from(paths))
    parent = row
    for key in path[:-1]:
        parent = parent[key]
    if kind == "swap":
        parent[path[-1]] = draw(json_values)
    elif kind == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif kind == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = draw(json_values)
    text = json.dumps(row)
    if kind == "duplicate":
        text = "{" + json.dumps(str(path[0])) + ": 1, " + text[1:]
    elif kind == "nan":
        text = text.replace("4", "NaN", 1) if "4" in text else text[:-1] + ', "n": Infinity}'
    data = text.encode()
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\x80"])) + data[at:]
    return data


def _check_refusal(e, path: Path, line: int | None = None):
    message = str(e)
    assert message.startswith(str(path)), message
    if line is not None:
        assert message.startswith(f"{path}:{line}") or message.startswith(f"{path}:"), message
    assert "\n" not in message, message


def _fuzz_comparisons(tmp_path, data: bytes, n: list):
    from rlhf_repro.io import InputError
    from rlhf_repro.sources import load_comparisons

    n[0] += 1
    d = tmp_path / f"c{n[0]}"
    d.mkdir()
    f = d / "train.jsonl"
    f.write_bytes(json.dumps(COMPARISON).encode() + b"\r\n" + data)
    try:
        out = load_comparisons(d)
    except InputError as e:
        _check_refusal(e, f)
        return
    for row in out["train"] + out["validation"]:  # accepted: every field has the schema's type
        assert row["choice"] in (0, 1) and len(row["summaries"]) == 2
        for s in row["summaries"]:
            assert isinstance(s["text"], str) and s["text"].startswith(" ")
            assert s["policy"] is None or isinstance(s["policy"], str)
        for key in ("worker", "batch", "split"):
            assert row[key] is None or isinstance(row[key], str)
        c = row["extra"]["confidence"]
        assert c is None or (isinstance(c, int) and not isinstance(c, bool))


@given(data=mutated_json_line(COMPARISON))
@settings(max_examples=FUZZ_EXAMPLES, **FUZZ)
def test_fuzz_comparison_reader(tmp_path, data):
    _fuzz_comparisons(tmp_path, data, _counter(tmp_path))


@pytest.mark.slow
@given(data=mutated_json_line(COMPARISON))
@settings(max_examples=SLOW_FUZZ_EXAMPLES, **FUZZ)
def test_fuzz_comparison_reader_slow(tmp_path, data):
    _fuzz_comparisons(tmp_path, data, _counter(tmp_path))


def _fuzz_tldr(tmp_path, data: bytes, n: list):
    from rlhf_repro.io import InputError
    from rlhf_repro.sources import load_tldr

    n[0] += 1
    d = tmp_path / f"t{n[0]}"
    d.mkdir()
    for split in ("valid", "test"):
        (d / f"{split}.jsonl").write_text(json.dumps({**POST, "id": split}) + "\n")
    f = d / "train.jsonl"
    f.write_bytes(data)
    try:
        out = load_tldr(d)
    except InputError as e:
        _check_refusal(e, f)
        return
    for row in out["train"]:
        assert all(isinstance(row[k], str) for k in ("id", "subreddit", "title", "post", "summary"))


@given(data=mutated_json_line(POST))
@settings(max_examples=FUZZ_EXAMPLES, **FUZZ)
def test_fuzz_tldr_reader(tmp_path, data):
    _fuzz_tldr(tmp_path, data, _counter(tmp_path))


@pytest.mark.slow
@given(data=mutated_json_line(POST))
@settings(max_examples=SLOW_FUZZ_EXAMPLES, **FUZZ)
def test_fuzz_tldr_reader_slow(tmp_path, data):
    _fuzz_tldr(tmp_path, data, _counter(tmp_path))


def _counter(tmp_path) -> list:
    """A per-test example counter kept on the tmp dir (hypothesis reruns the body with one tmp_path)."""
    marker = tmp_path / ".n"
    n = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(n + 1))
    return [n * 1]


JUDGED_HEADER = ["preferred", "query", "response", "reference", "score", "reference_score", "response_token_len"]
JUDGED_ROW = ["policy", "q", "r", "f", "1.5", "-0.5", "12"]
cells = st.sampled_from(["", "nan", "inf", "-inf", "1e999", "abc", "3.5", "policy", "reference", "x,y", '"', "\n"])


@st.composite
def mutated_table(draw) -> bytes:
    """A judged table (header and 2-4 rows) with one change: a column dropped or duplicated, a row with a
    field more or fewer, a cell replaced by a non-number or a non-finite one, bytes that are not UTF-8, a
    truncation, an empty file, a BOM and CRLF (valid), or no change."""
    header = list(JUDGED_HEADER)
    rows = [list(JUDGED_ROW) for _ in range(draw(st.integers(1, 3)))]
    kind = draw(st.sampled_from(["drop", "dupe", "short", "long", "cell", "bytes", "truncate", "empty", "bom", "none"]))
    j = draw(st.integers(0, len(header) - 1))
    if kind == "drop":
        header.pop(j)
        for r in rows:
            r.pop(j)
    elif kind == "dupe":
        header.append(header[j])
        for r in rows:
            r.append(r[j])
    elif kind == "short":
        rows[-1].pop()
    elif kind == "long":
        rows[0].append("extra")
    elif kind == "cell":
        rows[draw(st.integers(0, len(rows) - 1))][j] = draw(cells)
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if kind == "bom" else "\n").writerows([header, *rows])
    data = buf.getvalue().encode()
    if kind == "bom":
        data = b"\xef\xbb\xbf" + data
    elif kind == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\xff" + data[at:]
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == "empty":
        data = b""
    return data


def _fuzz_table(tmp_path, data: bytes, n: list):
    import math

    from rlhf_repro.io import InputError
    from rlhf_repro.readers import read_table

    n[0] += 1
    f = tmp_path / f"t{n[0]}.csv"
    f.write_bytes(data)
    try:
        rows = read_table(f, ("preferred", "query", "response", "reference"))
    except InputError as e:
        _check_refusal(e, f)
        return
    assert rows and len(rows.lines) == len(rows)
    for r in rows:
        assert r["preferred"] in ("policy", "reference", "")
        for c in ("score", "reference_score"):
            if r.get(c):
                assert math.isfinite(float(r[c]))
        if r.get("response_token_len"):
            int(r["response_token_len"])


@given(data=mutated_table())
@settings(max_examples=FUZZ_EXAMPLES, **FUZZ)
def test_fuzz_table_reader(tmp_path, data):
    _fuzz_table(tmp_path, data, _counter(tmp_path))


@pytest.mark.slow
@given(data=mutated_table())
@settings(max_examples=SLOW_FUZZ_EXAMPLES, **FUZZ)
def test_fuzz_table_reader_slow(tmp_path, data):
    _fuzz_table(tmp_path, data, _counter(tmp_path))


def _table_cli_commands(path: Path, out: Path) -> list[list[str]]:
    return [
        ["judge", "--input", str(path), "--backend", "gold", "--out", str(out / "judged.csv")],
        ["sim", "score-table", str(path), "--out", str(out / "scored.csv")],
        ["analyze", "win-rate", "--judged", str(path), "--out", str(out / "w.json")],
        ["analyze", "agreement", "--judged", str(path), "--out", str(out / "a.json")],
        ["analyze", "calibration", "--judged", str(path), "--out", str(out / "c.json")],
        ["analyze", "eos", "--table", str(path), "--out", str(out / "e.json")],
        ["analyze", "length-control", "--judged", str(path), "--length-by", "char", "--out", str(out / "l.json")],
        ["analyze", "rouge", "--table", str(path), "--out", str(out / "r.json")],
    ]


def _fuzz_table_clis(tmp_path, data: bytes, n: list):
    n[0] += 1
    f = tmp_path / f"t{n[0]}.csv"
    f.write_bytes(data)
    for argv in _table_cli_commands(f, tmp_path / f"out{n[0]}"):
        out = tmp_path / f"out{n[0]}"
        r = cli(*argv)
        assert "Traceback" not in r.stderr, (argv, data, r.stderr[-3000:])
        assert r.returncode in (0, 2), (argv, data, r.returncode, r.stderr[-3000:])
        if r.returncode == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (argv, r.stderr)
            assert str(f) in lines[0] or "give " in lines[0], (argv, lines)
            assert not out.exists() or not any(out.iterdir()), argv  # nothing written after a refusal
        elif argv[0] == "analyze":
            json.loads(r.stdout)  # the output is JSON (no NaN)
        if out.exists():
            import shutil

            shutil.rmtree(out)


@given(data=mutated_table())
@settings(max_examples=FUZZ_CLI_EXAMPLES, **FUZZ)
def test_fuzz_every_table_command(tmp_path, data):
    _fuzz_table_clis(tmp_path, data, _counter(tmp_path))


@pytest.mark.slow
@given(data=mutated_table())
@settings(max_examples=SLOW_FUZZ_CLI_EXAMPLES, **FUZZ)
def test_fuzz_every_table_command_slow(tmp_path, data):
    _fuzz_table_clis(tmp_path, data, _counter(tmp_path))


def _fuzz_jsonl_clis(tmp_path, data: bytes, n: list):
    """build-dataset (TL;DR posts and comparisons) and judge --pairs on a comparisons file with one mutated
    line: exit 0, or 2 with one line naming the file; no output directory after a refusal."""
    n[0] += 1
    root = tmp_path / f"j{n[0]}"
    posts, comparisons = root / "posts", root / "comparisons"
    posts.mkdir(parents=True)
    comparisons.mkdir()
    for split in ("train", "valid", "test"):
        (posts / f"{split}.jsonl").write_text(json.dumps({**POST, "id": split}) + "\n")
    good = json.dumps(COMPARISON).encode() + b"\n"
    (comparisons / "train.jsonl").write_bytes(good + data)
    (comparisons / "valid1.jsonl").write_bytes(good.replace(b'"train"', b'"valid1"'))
    out = root / "built"
    commands = [
        ["build-dataset", "--tldr-source", str(posts), "--comparisons-source", str(comparisons), "--tokenizer"]
        + [str(REAL_TOKENIZER), "--output-dir", str(out), "--no-check-length-correctness", "--no-progress"],
        ["judge", "--pairs", str(comparisons), "--pairs-split", "train", "--backend", "gold", "--out"]
        + [str(out / "pairs.csv")],
    ]
    for argv in commands:
        r = cli(*argv)
        assert "Traceback" not in r.stderr, (argv[0], data, r.stderr[-3000:])
        assert r.returncode in (0, 2), (argv[0], data, r.returncode, r.stderr[-3000:])
        if r.returncode == 2:
            lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error")]
            assert len(lines) == 1 and str(comparisons / "train.jsonl") in lines[0], (argv[0], r.stderr)
            assert not out.exists(), argv[0]
        elif out.exists():
            import shutil

            shutil.rmtree(out)


@given(data=mutated_json_line(COMPARISON))
@settings(max_examples=FUZZ_CLI_EXAMPLES, **FUZZ)
def test_fuzz_jsonl_commands(tmp_path, data):
    _fuzz_jsonl_clis(tmp_path, data, _counter(tmp_path))


@pytest.mark.slow
@given(data=mutated_json_line(COMPARISON))
@settings(max_examples=SLOW_FUZZ_CLI_EXAMPLES, **FUZZ)
def test_fuzz_jsonl_commands_slow(tmp_path, data):
    _fuzz_jsonl_clis(tmp_path, data, _counter(tmp_path))
