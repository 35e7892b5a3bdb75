"""The report: the paper's numbers, figures with the paper beside ours, report.md / report.html (opened in a
real headless browser), results/reference and the script that refreshes it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cmd
from tests.test_figures import make_run

pytestmark = pytest.mark.smoke
REFERENCE = REPO / "results" / "reference"


def test_paper_numbers_are_typed_and_a_bad_row_names_line_and_column(tmp_path):
    from analysis import paper
    from rlhf_repro.io import InputError

    rows = paper.load()
    # Every quantity the figures and the headline table draw is there, at the paper's three sizes.
    for quantity, stage in (("win_rate", "sft"), ("win_rate", "ppo"), ("rm_accuracy_tldr", "reward"),
                            ("rm_accuracy_cnndm", "reward"), ("dpo_implicit_accuracy_tldr", "dpo"),
                            ("sft_rougeL", "sft"), ("response_tokens", "ppo")):  # fmt: skip
        assert {r["model"] for r in paper.rows_of(rows, quantity, stage)} == {"pythia-1b", "pythia-2.8b", "pythia-6.9b"}
    ppo_1b = [r["value"] for r in paper.rows_of(rows, "win_rate", "ppo") if r["model"] == "pythia-1b"]
    assert sorted(ppo_1b) == [0.20, 0.22, 0.54, 0.62]  # the per-seed points, two over-optimized
    tldr = {r["model"]: (r["value"], r["error"]) for r in paper.rows_of(rows, "rm_accuracy_tldr", "reward")}
    assert tldr["pythia-6.9b"] == (0.689, 0.004)
    assert all(isinstance(r["parameters"], int) and r["evidence"] in ("S", "F") for r in rows)

    text = paper.DEFAULT.read_text().splitlines()
    bad = tmp_path / "numbers.csv"
    bad.write_text("\n".join([text[0], text[1].replace(",0.247,", ",zero,")]) + "\n")
    with pytest.raises(InputError) as e:
        paper.load(bad)
    assert e.value.line == 2 and e.value.field == "value"
    bad.write_text("\n".join([text[0], text[1].replace(",F,", ",X,")]) + "\n")
    with pytest.raises(InputError) as e:
        paper.load(bad)
    assert e.value.field == "evidence"
    sft_1b = next(line for line in text if line.startswith("win_rate,sft,pythia-1b,"))
    bad.write_text("\n".join([text[0], sft_1b.replace(",0.325,", ",0.9,")]) + "\n")  # outside 0.32-0.33
    with pytest.raises(InputError, match="outside its range") as e:
        paper.load(bad)
    assert e.value.field == "value"


def _results(root: Path) -> Path:
    results = root / "results"
    for model, hidden in (("small", 8), ("large", 32)):
        for seed in (1, 2):
            make_run(results, "exp", "sft", model, seed, hidden, {"validation/sft/rouge/rougeL": 0.3 + hidden / 100})
            make_run(results, "exp", "reward", model, seed, hidden - 1,
                     {"eval/rm/validation/accuracy": 0.6, "eval/rm/validation_cnndm/accuracy": 0.55})  # fmt: skip
            make_run(results, "exp", "ppo", model, seed, hidden, {})
            make_run(results, "exp", "dpo", model, seed, hidden, {"eval/rm/validation/accuracy": 0.58})
    claims = [{"claim": "PPO beats SFT", "passed": True, "numbers": {"difference": 0.2, "n_ppo": 40}}]
    (results / "exp" / "claims.json").write_text(json.dumps(claims))
    control = [{"control": "control-negated", "claim_number": 1, "claim": "PPO beats SFT", "ok": True,
                "passed": False, "numbers": {"difference": -0.3}}]  # fmt: skip
    (results / "exp" / "controls.json").write_text(json.dumps(control))
    return results


def test_figures_put_the_paper_beside_ours_rates_on_0_to_1_and_say_what_is_missing(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from analysis import figures, paper

    axes = {}
    real_save = figures.save

    def spy(fig, out, name, written):
        axes[name] = [(ax.get_title(), ax.get_ylim(), ax.get_xlim(), ax.get_xlabel()) for ax in fig.axes]
        real_save(fig, out, name, written)

    monkeypatch.setattr(figures, "save", spy)
    results = _results(tmp_path)
    numbers = figures.build(results, tmp_path / "out", headline=["exp"], paper=paper.load())
    # Figures of a quantity the paper reports have a second panel, on the paper's own size axis.
    for name in ("win_rate", "rm_accuracy", "sft_rouge", "response_length"):
        (ours, *_), (theirs, _, xlim, xlabel) = axes[name][0], axes[name][1]
        assert ours.startswith("ours") and theirs.startswith("the paper"), name
        assert "Pythia" in xlabel and xlim[0] < 1.0e9 < 6.9e9 < xlim[1], name  # never rescaled onto ours
    for name in ("win_rate", "rm_accuracy", "length_control", "rm_calibration_large"):
        for _, ylim, _, _ in axes[name]:
            assert ylim[0] == 0 and 1.0 <= ylim[1] <= 1.05, (name, ylim)
    assert axes["eos"][0][2] == (0.0, 1.0)  # the no-EOS share's axis
    # No gold metrics in these runs: the over-optimization figure is not drawn, and the report says why.
    assert "overoptimization" in numbers["not_drawn"] and "--gold-metrics" in numbers["not_drawn"]["overoptimization"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Not drawn: overoptimization, because" in report and "| paper 6.9B |" in report
    assert "Claims of `exp`" in report and "| control-negated |" in report and "FAIL (as it must)" in report
    for name in numbers["figures"]:
        assert f"![{name}]({name})" in report and figures.caption_of(name[:-4]) in report, name
    # A results folder's figures.json gives the defaults; a malformed one is refused with its field.
    (results / "figures.json").write_text(json.dumps({"headline": "exp"}))
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", "figures", str(results), "--out", str(tmp_path / "x")])
    assert r.returncode == 2 and "figures.json" in r.stderr and "'headline'" in r.stderr
    (results / "figures.json").write_text(json.dumps({"headline": ["exp"]}))
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", "figures", str(results), "--out", str(tmp_path / "x")])
    assert r.returncode == 0 and json.loads((tmp_path / "x" / "numbers.json").read_text())["headline_experiments"] == [
        "exp"
    ]
    (results / "figures.json").unlink()
    # Without the paper's numbers: one panel each, nothing from the paper in the report.
    axes.clear()
    figures.build(results, tmp_path / "alone", headline=["exp"])
    assert len(axes["win_rate"]) == 1 and "paper 6.9B" not in (tmp_path / "alone" / "report.md").read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_html_renders_in_a_headless_browser_with_every_figure(tmp_path):
    """report.html is one self-contained file: it opens in Chromium, every figure loads from its data URI,
    nothing refers to a file beside it, and the page logs no error."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("RLHF_REPRO_REQUIRE_BROWSER") == "1":
            pytest.fail("no chromium on PATH, and .ci/run requires one (apt-get install chromium)")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    results = _results(tmp_path)
    out = tmp_path / "report"
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", "figures", str(results), "--out", str(out), "--headline",
                 "exp"])  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads((out / "numbers.json").read_text())["figures"]
    # Alone in a folder of its own: a broken reference to a file beside it could not load.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "report.html", alone / "report.html")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=flags)
        page = b.new_page()
        errors, failed = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda req: failed.append(req.url))
        page.goto((alone / "report.html").as_uri(), wait_until="load")
        title = page.title()
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 21)])"
        )
        refs = page.evaluate(
            "Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || "
            "e.getAttribute('href'))"
        )
        captions = page.evaluate("Array.from(document.querySelectorAll('figcaption')).map(c => c.innerText)")
        headline = page.evaluate("document.querySelector('table').innerText")
        b.close()
    assert title == "rlhf-repro report" and not errors and not failed, (errors, failed)
    assert sorted(alt for alt, *_ in images) == sorted(name[:-4] for name in figures)
    for alt, complete, width, src in images:
        assert complete and width > 0 and src == "data:image/png;base64", alt
    assert all(ref.startswith(("data:", "#")) for ref in refs), refs
    assert len(captions) == len(figures) and all(len(c) > 40 for c in captions)
    assert "paper 6.9B" in headline and "PPO win rate" in headline


def test_refresh_reference_keeps_small_files_only_and_refuses_another_world(tmp_path):
    source = tmp_path / "runs"
    results = _results(source)
    (source / "world").mkdir()
    (source / "world" / "world.json").write_text(json.dumps({"reference_gold_scores": {}}))
    dest = tmp_path / "reference"
    script = [sys.executable, "scripts/refresh_reference.py", "--source", str(source), "--dest", str(dest)]
    # Claims of an experiment whose runs have two seeds: whose are they? Refused.
    r = run_cmd(script + ["--experiments", "exp", "--headline", "exp"])
    assert r.returncode == 2 and "whose seed" in r.stderr
    (results / "exp" / "claims.json").unlink()
    (results / "exp" / "controls.json").unlink()
    r = run_cmd(script + ["--experiments", "exp", "--headline", "exp"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = dest / "exp" / "ppo" / "large" / "1"
    assert sorted(p.name for p in run.iterdir()) == [
        "judged_validation.csv", "metrics.jsonl", "model_info.json", "summary.json",
    ]  # fmt: skip
    assert "query" not in (run / "judged_validation.csv").read_text().splitlines()[0].split(",")
    assert json.loads((run / "model_info.json").read_text())["parameters"] == 32 * 32
    assert (dest / "exp" / "reward" / "small" / "2" / "rm_eval_validation.csv").exists()
    assert not (dest / "exp" / "dpo" / "small" / "2" / "rm_eval_validation.csv").exists()
    index = json.loads((dest / "index.json").read_text())
    assert len(index["runs"]) == 16 and index["machine"]["cpu_capability"]
    assert json.loads((dest / "figures.json").read_text()) == {"headline": ["exp"], "world": "world"}
    # The copy draws the same figures as the original (weights gone: sizes come from model_info.json).
    original = json.loads(run_cmd([sys.executable, "-m", "rlhf_repro.cli", "figures", str(results), "--out",
                                   str(tmp_path / "o"), "--headline", "exp"]).stdout)  # fmt: skip
    copied = json.loads((dest / "report" / "numbers.json").read_text())
    assert copied["figures"] == original["figures"]
    assert copied["win_rate"] == json.loads((tmp_path / "o" / "numbers.json").read_text())["win_rate"]
    # A stale file in a refreshed run folder does not survive; another world is refused.
    (run / "stale.csv").write_text("x\n1\n")
    (source / "world" / "world.json").write_text(json.dumps({"other": 1}))
    r = run_cmd(script + ["--experiments", "exp"])
    assert r.returncode == 2 and "one world" in r.stderr
    (source / "world" / "world.json").write_text(json.dumps({"reference_gold_scores": {}}))
    r = run_cmd(script + ["--experiments", "exp", "--no-figures"])
    assert r.returncode == 0 and not (run / "stale.csv").exists()
    # One seed (a quickstart's folder): its claims and controls are kept under that seed's name.
    one = tmp_path / "one"
    for path in sorted(results.glob("exp/*/*/1")):
        shutil.copytree(path, one / "results" / path.relative_to(results))
    (one / "results" / "exp" / "claims.json").write_text(json.dumps([{"claim": "c", "passed": True, "numbers": {}}]))
    r = run_cmd(script[:3] + [str(one), "--dest", str(dest), "--experiments", "exp"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (dest / "exp" / "claims_seed1.json").exists()
    assert "Claims of `exp` (seed 1)" in (dest / "report" / "report.md").read_text()


def test_the_committed_reference_results_regenerate_their_numbers(tmp_path):
    """`rlhf-repro figures results/reference` on a clean checkout draws every figure from the committed run
    folders alone and writes numbers.json equal to the committed one (a change to the figures' numbers, or
    to the reference runs, must commit both)."""
    committed = json.loads((REFERENCE / "report" / "numbers.json").read_text())
    r = run_cmd([sys.executable, "-m", "rlhf_repro.cli", "figures", str(REFERENCE), "--out", str(tmp_path)])
    assert r.returncode == 0, r.stderr[-2000:]
    fresh = json.loads((tmp_path / "numbers.json").read_text())
    # Equal, up to the last bits a CPU of another vector ISA may round differently (the length-controlled
    # fits are Newton steps and bootstraps): relative 1e-9.
    sys.path.insert(0, str(REPO / "scripts"))
    from refresh_reference import _diff

    diffs: list[str] = []
    _diff(committed, fresh, "numbers.json", 1e-9, 1e-12, diffs)
    assert not diffs and set(fresh) == set(committed), diffs[:20]
    assert not fresh["not_drawn"], fresh["not_drawn"]  # every figure the suite can draw
    for name in fresh["figures"]:
        assert (tmp_path / name).stat().st_size > 0 and (REFERENCE / "report" / name).is_file(), name
    # Each reference run names the commit that produced it, and holds no weights.
    index = json.loads((REFERENCE / "index.json").read_text())
    assert all(len(run["commit"] or "") == 40 for run in index["runs"].values())
    assert not [p for p in REFERENCE.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")]
    # The README shows the headline figure and table from it.
    readme = (REPO / "README.md").read_text()
    assert "results/reference/report/win_rate.png" in readme and "| paper 6.9B |" in readme
    report = (REFERENCE / "report" / "report.md").read_text().splitlines()
    glance = readme.split("## Results at a glance", 1)[1].split("\n## ", 1)[0]
    shown = [line for line in glance.splitlines() if line.startswith("| ")]
    assert len(shown) >= 5 and all(line in report for line in shown), [x for x in shown if x not in report]


def test_refresh_reference_rerun_names_every_reference_experiment(tmp_path):
    r = run_cmd([sys.executable, "scripts/refresh_reference.py", "--rerun", str(tmp_path), "--dry-run"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for seed in (1, 2, 3):
        assert f"rlhf-repro quickstart --seed {seed} --out {tmp_path}/quickstart-seed{seed}" in lines
    for experiment in ("overoptimization", "quickstart-ppo-lora", "tiny-scaling"):
        assert any(line.startswith(f"rlhf-repro reproduce {experiment} ") for line in lines), experiment
    # The committed reference holds what the rerun would copy.
    index = json.loads((REFERENCE / "index.json").read_text())["runs"]
    for experiment in ("quickstart", "quickstart-no-eos-trick", "overoptimization", "tiny-scaling"):
        assert any(key.startswith(experiment + "/") for key in index), experiment
    assert {key.split("/")[-1] for key in index if key.startswith("quickstart/")} == {"1", "2", "3"}
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_figures_paper_flags(tmp_path):
    """--no-paper draws ours alone; --paper CSV reads another file (a bad one exits 2 naming it)."""
    results = _results(tmp_path)
    base = [sys.executable, "-m", "rlhf_repro.cli", "figures", str(results), "--headline", "exp", "--out"]
    r = run_cmd(base + [str(tmp_path / "alone"), "--no-paper"])
    assert r.returncode == 0 and "paper 6.9B" not in (tmp_path / "alone" / "report.md").read_text()
    r = run_cmd(base + [str(tmp_path / "with")])
    assert r.returncode == 0 and "paper 6.9B" in (tmp_path / "with" / "report.md").read_text()
    bad = tmp_path / "numbers.csv"
    bad.write_text("quantity,value\nwin_rate,0.5\n")
    r = run_cmd(base + [str(tmp_path / "bad"), "--paper", str(bad)])
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr
