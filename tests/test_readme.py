"""Docs cannot rot: every suite command the README and docs/ show runs (with --help or --dry-run), and
.ci/run performs the README's set-up commands."""

import re
import shlex

import pytest

from tests.conftest import REPO, run_cmd

pytestmark = pytest.mark.smoke
README = (REPO / "README.md").read_text()
# The README and the pages it sends readers to: every command any of them shows is run here.
DOCS = README + "".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))


def readme_commands():
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", DOCS, re.S)
    lines = []
    for block in blocks:
        block = block.replace("\\\n", " ")
        lines += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines


def suite_commands():
    out = []
    for line in readme_commands():
        for part in line.split("&&"):
            words = shlex.split(part.strip())
            if words and words[0] in ("torchrun", "accelerate"):
                # A multi-process launch: the script it launches must parse (the launch itself is
                # exercised by the 2-process smoke tests).
                words = ["python", next(w for w in words if w.endswith(".py"))]
            if words and (
                words[0] in ("rlhf-repro", ".venv/bin/rlhf-repro")
                or (words[0] == "python" and words[1].startswith(("experiments/", "benchmarks/", "scripts/")))
            ):
                out.append(words)
    return out


def test_readme_shows_the_two_setup_commands_and_ci_runs_them():
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in README and 'pip install -e ".[dev]" -c constraints.txt' in README
    assert "pip install -q torch==2.13.0" in ci and 'pip install -q -e ".[dev]" -c constraints.txt' in ci
    assert "rlhf-repro quickstart" in README and "python -m pytest" in README


@pytest.mark.parametrize("words", suite_commands(), ids=lambda w: " ".join(w)[:60])
def test_readme_command_runs(words):
    import sys

    if words[0].endswith("rlhf-repro"):
        args = [sys.executable, "-m", "rlhf_repro.cli", *words[1:]]
    else:
        args = [sys.executable, *words[1:]]
    dry = words[1] in ("quickstart", "reproduce") or words[1].startswith("benchmarks/")
    extra = ["--dry-run"] if dry else ["--help"]
    r = run_cmd(args + extra)
    assert r.returncode == 0, r.stderr[-2000:]


def test_readme_model_table_matches_the_presets():
    """The base-model table states each preset's shape and size; a preset changed in code must change it."""
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import MODEL_SHAPES, count_parameters, shape_config

    rows = re.findall(r"^\| (tiny-\w+|pythia-14m) \| ([^|]+) \| ([\d,]+) \|", DOCS, re.M)
    table = {name: (shape, int(n.replace(",", ""))) for name, shape, n in rows}
    assert set(table) == set(MODEL_SHAPES)
    for name, preset in MODEL_SHAPES.items():
        stated_shape, stated_parameters = table[name]
        shape = [int(x) for x in stated_shape.split(",")[0].split("/")]
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        assert shape == [preset[k] for k in keys], name
        # 2,489 tokens: the world tokenizer (pythia-14m pads to its own 50,304 whatever the tokenizer).
        assert count_parameters(GPTNeoXForCausalLM(shape_config(name, 2489))) == stated_parameters, name


def test_every_model_shape_can_be_pretrained():
    import typing

    from experiments.pretrain import Args
    from rlhf_repro.modeling import MODEL_SHAPES

    assert set(typing.get_args(typing.get_type_hints(Args)["model_shape"])) == set(MODEL_SHAPES)


def test_every_detail_tag_in_the_code_resolves_in_docs_details():
    """`detail N`, `details N-M`, `details N, M` and `R-NN` written in code each have their entry in
    docs/details.md."""
    details = (REPO / "docs" / "details.md").read_text()
    headings = set(re.findall(r"^### (detail \d+|R-\d\d)$", details, re.M))
    found = set()
    for path in [*REPO.glob("rlhf_repro/**/*.py"), *REPO.glob("experiments/*.py"), *REPO.glob("analysis/*.py")]:
        text = path.read_text()
        found |= {(t, path.name) for t in re.findall(r"\bR-\d\d\b", text)}
        for m in re.finditer(r"\b[Dd]etails? (\d+)((?:\s*(?:-|,|and)\s*\d+)*)", text):
            numbers = [int(m.group(1))] + [int(x) for x in re.findall(r"\d+", m.group(2))]
            if "-" in m.group(2):
                numbers = list(range(numbers[0], numbers[-1] + 1))
            found |= {(f"detail {n}", path.name) for n in numbers}
    assert len(found) > 50
    missing = sorted((tag, where) for tag, where in found if tag not in headings)
    assert not missing, missing


def test_every_paper_detail_has_a_code_site_findable_by_its_number():
    """`grep -rnw "detail N"` (this exact form: lower-case, singular, one number) lands on code for every one
    of the paper's 25 details, except those docs/details.md marks as an observation without code."""
    details = (REPO / "docs" / "details.md").read_text()
    observations = set(re.findall(r"^### detail (\d+)\n.*?\(an observation, no code site\)", details, re.M | re.S))
    code = "\n".join(
        p.read_text()
        for p in [*REPO.glob("rlhf_repro/**/*.py"), *REPO.glob("experiments/*.py"), *REPO.glob("analysis/*.py")]
    )
    without = [n for n in range(1, 26) if str(n) not in observations and not re.search(rf"\bdetail {n}\b", code)]
    assert not without, f"details with no `detail N` code site: {without}"


def test_the_readable_pipeline_scripts_equal_the_dry_run():
    """scripts/quickstart.sh and scripts/paper_1b_seed1.sh are generated from `reproduce --dry-run` and must
    match it (a changed budget or flag shows up here until `python scripts/make_scripts.py` is rerun)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "scripts/make_scripts.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("quickstart.sh", "paper_1b_seed1.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "scripts" / name)]).returncode == 0, name
