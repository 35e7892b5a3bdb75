"""The quickstart end to end at its default sizes, with checks on the numbers it reports."""

import json

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.slow


def test_quickstart_default(tmp_path):
    out = tmp_path / "qs"
    r = cli("quickstart", "--out", str(out), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "== quickstart summary ==" in r.stdout
    world = json.loads((out / "world" / "world.json").read_text())
    assert world["sizes"]["tldr/train"] == 16000
    acc = world["gold_accuracy_validation"]
    assert 0.7 < acc["all"]["accuracy"] < 0.95 and abs(acc["all"]["accuracy"] - acc["expected_ceiling"]) < 0.05
    build = json.loads((out / "data" / "build_summary.json").read_text())
    assert build["preference"]["validation_cnndm"]["rows"] == 1000
    assert 0 < build["sft"]["train"]["truncated_queries"] < 0.1 * 16000  # paragraph truncation is exercised
    over = [
        v["over_budget"]
        for split in build["sft"].values()
        for v in split.values()
        if isinstance(v, dict) and "over_budget" in v
    ]
    assert sum(over) == 0  # the tiny budgets fit the default world
    pre = json.loads(next((out / "results").rglob("summary.json")).read_text())
    assert pre["val_loss_after"] < 0.2 * pre["val_loss_before"]
