"""One reader per input format, each against a declared schema; every command reads user files through them.

The contract (docs/inputs.md): a readable file gives rows that match its schema; anything else
stops with one line naming the file, the line (or record) and the field, and exit status 2; nothing is
written before the input has been read.

- JSONL rows (TL;DR posts, OpenAI comparisons): `read_jsonl`. UTF-8 (a byte-order mark is accepted),
  CRLF or LF, a final newline or none, blank lines skipped; each line one JSON object. Refused: bytes that
  are not UTF-8, lines that are not JSON or not an object, a key given twice in one object (JSON allows
  it and the last one would win silently), and the non-standard literals NaN, Infinity and -Infinity
  (Python's json accepts them; no field of ours can be non-finite). The rows' fields are then checked by
  the pydantic models below (`validate_row`): `TldrPost`, `Comparison` (and its `Info`, `Summary`,
  `Extra`), `PromptComparison`.
- CSV tables (query-response, judged, RM evaluation tables, OpenAI baselines): `read_table`. Same text
  rules as JSONL. Refused: an empty file, a header naming a column twice, a row with more or fewer fields
  than the header, a table with a header and no rows, a required column missing, and any cell that does
  not match its column's type in `COLUMNS` (a choice outside its allowed values, a number that does not
  parse or is not finite, an integer with a fraction, a boolean other than True/False). Columns not in
  `COLUMNS` are kept as text.
- Output locations: `output_file` and `output_dir` refuse a path that exists as the other kind (or whose
  parent is a file) before anything is computed.

pydantic is the schema library: it is already installed with wandb and openai, validates in its compiled
core (a 16,000-row split in well under a second), reports the failing field's location, and has a strict
mode that refuses the silent coercions (1 -> "1", "1" -> True) that let a wrong type reach pyarrow.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from rlhf_repro.io import InputError

# --- text -------------------------------------------------------------------------------------------------


def decode_utf8(raw: bytes, path: str | os.PathLike) -> str:
    """The file's text; a UTF-8 byte-order mark is dropped, any other invalid byte is refused with its line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, offset) + 1
        raise InputError(
            f"not valid UTF-8 (byte {raw[offset : offset + 1]!r} at offset {offset}); save the file as UTF-8",
            path,
            line=line,
        ) from None


def _read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if p.is_dir():
        raise InputError("is a directory; expected a file", path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None


# --- JSONL ------------------------------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def _no_constants(name: str):
    raise _Refused(f"{name} is not a number JSON allows (non-finite values are refused)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def loads_strict(text: str):
    """json.loads without NaN/Infinity literals and without duplicated keys (both raise ValueError)."""
    return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line of a JSONL file; errors name the file and line."""
    raw = _read_bytes(path)
    text = decode_utf8(raw, path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = loads_strict(line)
        except _Refused as e:
            raise InputError(str(e), path, lineno) from None
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", path, lineno) from None
        except RecursionError:
            raise InputError("JSON nested too deeply", path, lineno) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}", path, lineno)
        yield lineno, obj


# --- row schemas (pydantic) -------------------------------------------------------------------------------

_STRICT = ConfigDict(strict=True, extra="allow")
Text = Annotated[str, Field(max_length=200_000)]  # a Reddit post is at most 40,000 characters
Id = str | int  # hub exports carry string ids; some conversions wrote integers


class TldrPost(BaseModel):
    """A row of OpenAI's `tldr_3_filtered` (the SFT data): the builder formats the query from it."""

    model_config = _STRICT
    id: Id | None = None
    subreddit: Text
    title: Text
    post: Text
    summary: Text


class Info(BaseModel):
    model_config = _STRICT
    id: Id | None = None
    post: Text | None = None
    title: Text | None = None
    subreddit: Text | None = None
    article: Text | None = None
    site: str | None = None


class Summary(BaseModel):
    model_config = _STRICT
    text: Text
    policy: str | None = None
    note: str | None = None


class Extra(BaseModel):
    model_config = _STRICT
    confidence: int | None = None


class Comparison(BaseModel):
    """A row of OpenAI's `comparisons` (the RM data) in its original form."""

    model_config = _STRICT
    info: Info
    summaries: Annotated[list[Summary], Field(min_length=2, max_length=2)]
    choice: Literal[0, 1]
    worker: str | None = None
    batch: str | None = None
    split: str | None = None
    extra: Extra | None = None


class PromptComparison(BaseModel):
    """A comparison in the prompt / chosen / rejected form of later conversions."""

    model_config = _STRICT
    id: Id | None = None
    prompt: Text | None = None
    subreddit: Text | None = None
    title: Text | None = None
    post: Text | None = None
    chosen: Text | None = None
    rejected: Text | None = None
    chosen_summary: Text | None = None
    rejected_summary: Text | None = None


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "list_type": "a list",
    "literal_error": None,
}


def _describe(err: dict) -> str:
    value = err.get("input")
    got = "null" if value is None else type(value).__name__
    if err["type"] == "missing":
        return "missing"
    if err["type"] in ("too_short", "too_long") and isinstance(value, list):
        return f"expected a list of exactly 2, got {len(value)}"
    if err["type"] == "string_too_long":
        return f"{len(value):,} characters; the limit is 200,000"
    if err["type"] == "literal_error":
        return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {value!r}"
    word = _TYPE_WORDS.get(err["type"])
    if word:
        return f"expected {word}, got {got}"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}"


def _field_of(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("str", "int")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def validate_row(model: type[BaseModel], row: dict, path, line: int, prefix: str = "") -> BaseModel:
    """`row` validated by `model`; the first error becomes an InputError naming file, line and field."""
    try:
        return model.model_validate(row)
    except ValidationError as e:
        errors = e.errors()
        # A union's members each report; the shallowest location is the field the user wrote.
        err = min(errors, key=lambda x: len(x["loc"]))
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("str", "int", "none")))
        raise InputError(_describe(err), path, line, field=prefix + _field_of(loc)) from None


# --- CSV tables ---------------------------------------------------------------------------------------------


def _empty_to_none(value):
    return None if value == "" else value


def _finite(value):
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {value!r}")
    return x


def _integer(value):
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


def _boolean(value):
    if value is None:
        return None
    if value in ("True", "true", "1"):
        return True
    if value in ("False", "false", "0"):
        return False
    raise ValueError(f"expected True or False, got {value!r}")


def _choice(*allowed: str):
    def check(value):
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return value

    return check


Finite = Annotated[float | None, BeforeValidator(lambda v: _finite(_empty_to_none(v)))]
Integer = Annotated[int | None, BeforeValidator(lambda v: _integer(_empty_to_none(v)))]
Boolean = Annotated[bool | None, BeforeValidator(lambda v: _boolean(_empty_to_none(v)))]

# The type of every column any command reads, whichever table it is in (query-response tables of SFT, PPO
# and DPO; judged tables; RM evaluation tables; the OpenAI baseline CSV). A column not named here is text.
COLUMNS: dict[str, Any] = {
    "preferred": Annotated[str, BeforeValidator(_choice("policy", "reference", ""))],
    "policy_position": Annotated[str, BeforeValidator(_choice("A", "B", ""))],
    "score": Finite,
    "reference_score": Finite,
    "judge_policy_score": Finite,
    "judge_reference_score": Finite,
    "chosen_reward": Finite,
    "rejected_reward": Finite,
    "margin": Finite,
    "confidence": Integer,
    "response_token_len": Integer,
    "eos_present": Boolean,
    "accuracy": Finite,
}
_ADAPTERS = {name: TypeAdapter(t) for name, t in COLUMNS.items()}


class Table(list):
    """The rows of a table (dicts of text), with `lines[i]`: the file line row i starts on (1 = header)."""

    lines: list[int]


def read_table(path: str | os.PathLike, required: tuple[str, ...] = (), numeric: tuple[str, ...] = ()) -> Table:
    """The rows of a CSV table as dicts of text, each cell of a column in `COLUMNS` (or named in `numeric`:
    a caller's own score columns) checked against its type. Errors name the file, the line (1 = header) and
    the column."""
    raw = _read_bytes(path)
    try:
        text = decode_utf8(raw, path)
    except InputError as e:
        raise InputError(e.reason, path, line=e.line, field=_column_of_bad_byte(raw)) from None
    if not text.strip():
        raise InputError("empty file: expected a CSV header and rows", path, line=1)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        seen: dict[str, int] = {}
        for i, name in enumerate(header):
            if name in seen:
                raise InputError(
                    f"column {name!r} appears twice in the header (columns {seen[name] + 1} and {i + 1})",
                    path,
                    line=1,
                    field=name,
                )
            seen[name] = i
        missing = [c for c in required if c not in seen]
        if missing:
            raise InputError(f"missing column(s) {', '.join(missing)}", path, line=1, field=missing[0])
        checks = {c: _ADAPTERS[c] for c in header if c in _ADAPTERS}
        checks |= {c: _ADAPTERS["score"] for c in numeric if c in seen}
        rows, lines = Table(), []
        start = reader.line_num + 1
        for record in reader:
            line = start
            start = reader.line_num + 1
            if not record:
                continue  # a blank line
            if len(record) != len(header):
                raise InputError(
                    f"{len(record)} fields, the header has {len(header)}",
                    path,
                    line=line,
                    field=header[len(record)] if len(record) < len(header) else None,
                )
            row = dict(zip(header, record))
            for column, adapter in checks.items():
                try:
                    adapter.validate_python(row[column])
                except ValidationError as e:
                    msg = e.errors()[0]["msg"].removeprefix("Value error, ")
                    raise InputError(msg, path, line=line, field=column) from None
            rows.append(row)
            lines.append(line)
    except csv.Error as e:  # a field over the csv module's size limit, a NUL byte
        raise InputError(f"not a readable CSV ({e})", path, line=reader.line_num) from None
    if not rows:
        raise InputError("the table has a header and no rows", path, line=1)
    rows.lines = lines
    return rows


def _column_of_bad_byte(raw: bytes) -> str | None:
    """The header name of the column holding the first byte that is not UTF-8 (None if in the header)."""
    # surrogateescape maps each undecodable byte to one lone surrogate, so the CSV still parses and the
    # first field holding a surrogate is the culprit.
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")

    def bad(value: str) -> bool:
        return any("\udc80" <= ch <= "\udcff" for ch in value)

    try:
        records = csv.reader(io.StringIO(text, newline=""))
        header = next(records, [])
        if any(map(bad, header)):
            return None
        for record in records:
            for i, value in enumerate(record):
                if bad(value):
                    return header[i] if i < len(header) else f"column {i + 1}"
    except csv.Error:
        pass
    return None


def number(row: dict, column: str) -> float | None:
    """A checked numeric cell as a float (None when empty)."""
    value = row.get(column)
    return None if value in (None, "") else float(value)


# --- output locations ----------------------------------------------------------------------------------------


def output_file(path: str | os.PathLike) -> Path:
    """`path` as a file to write: refused when it is a directory or a parent is a file."""
    p = Path(path)
    if p.is_dir():
        raise InputError("is a directory; expected a file path to write", p)
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{parent} is a file, so nothing can be written under it", p)
    return p


def output_dir(path: str | os.PathLike) -> Path:
    """`path` as a directory to write into: refused when it exists as a file or a parent is a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError("exists and is not a directory; expected a directory to write into", p)
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{parent} is a file, so nothing can be written under it", p)
    return p
