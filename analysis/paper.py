"""The paper's published numbers (results/paper/numbers.csv), read for the figures and the report.

Each row is one number of Huang et al. (2024) or of its reference repository's figures: a quantity, the
stage it belongs to, the Pythia size, the seed or per-seed point where given, the value, and its error or
range where given (results/paper/README.md). `load` returns them typed; `series` picks one quantity of one
stage as (parameters, value) points, one per seed point where the source has them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from rlhf_repro.io import InputError

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "results" / "paper" / "numbers.csv"
COLUMNS = (
    "quantity", "stage", "model", "parameters", "seed", "value", "error", "low", "high", "unit", "source",
    "evidence", "note",
)  # fmt: skip
NUMBERS = ("value", "error", "low", "high")
# The label of each Pythia size on a paper panel's axis: the paper's sizes, never placed on our axis.
SIZE_NAMES = {"pythia-1b": "1B", "pythia-2.8b": "2.8B", "pythia-6.9b": "6.9B", "openai-1.3b": "1.3B (OpenAI)"}


def load(path: str | os.PathLike | None = None) -> list[dict]:
    """The rows of the paper's numbers, with `parameters` an int and the four number columns floats (or
    None where empty). Errors name the file, line and column."""
    from rlhf_repro.readers import read_table

    path = Path(path) if path is not None else DEFAULT
    table = read_table(path, required=COLUMNS)
    rows = []
    for i, raw in enumerate(table):
        line = table.lines[i]
        row = dict(raw)
        for column in (*NUMBERS, "parameters"):
            text = (raw[column] or "").strip()
            if not text:
                if column in ("value", "parameters"):
                    raise InputError("empty: a paper number needs its value and parameter count", path, line, column)
                row[column] = None
                continue
            try:
                number = float(text)
            except ValueError:
                raise InputError(f"{text!r} is not a number", path, line, column) from None
            if not math.isfinite(number):
                raise InputError(f"{text!r} is not a finite number", path, line, column)
            row[column] = int(number) if column == "parameters" else number
        low = row["low"] if row["low"] is not None else row["value"]
        high = row["high"] if row["high"] is not None else row["value"]
        if not low <= row["value"] <= high:
            raise InputError(f"value {row['value']} lies outside its range [{low}, {high}]", path, line, "value")
        if row["evidence"] not in ("S", "F"):
            raise InputError(f"{row['evidence']!r}: expected S (paper text) or F (read off a figure)", path, line,
                             "evidence")  # fmt: skip
        rows.append(row)
    return rows


def series(rows: list[dict], quantity: str, stage: str) -> list[tuple[int, float]]:
    """(parameters, value) of one quantity of one stage, one point per row."""
    return [(r["parameters"], r["value"]) for r in rows if r["quantity"] == quantity and r["stage"] == stage]


def rows_of(rows: list[dict], quantity: str, stage: str) -> list[dict]:
    return [r for r in rows if r["quantity"] == quantity and r["stage"] == stage]
