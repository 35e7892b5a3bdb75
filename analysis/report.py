"""The report a person reads: report.md and a self-contained report.html, written by `rlhf-repro figures`.

Both hold the same document, built once as a list of blocks: what the results folder holds and how to
regenerate it, the headline table (our numbers per model size beside the paper's at its Pythia sizes), the
claims and negative controls of every experiment that checked them (results/<experiment>/claims.json,
controls.json), and every figure with a one-line caption saying what to see in it, or why it was not drawn.
report.html embeds the figures as data URIs, so the one file can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from analysis.figures import size_label

# (row label, how to read ours from numbers.json, the paper's (quantity, stage) or None)
HEADLINE = (
    ("SFT win rate against the references", ("win_rate", "sft"), ("win_rate", "sft")),
    ("PPO win rate against the references", ("win_rate", "ppo"), ("win_rate", "ppo")),
    ("PPO w/ LoRA win rate", ("win_rate", "ppo-lora"), None),
    ("DPO win rate against the references", ("win_rate", "dpo"), ("win_rate", "dpo")),
    ("RM accuracy, TL;DR validation", ("preference_accuracy", "RM, TL;DR"), ("rm_accuracy_tldr", "reward")),
    ("RM accuracy, CNN/DM (out of domain)", ("preference_accuracy", "RM, CNN/DM"), ("rm_accuracy_cnndm", "reward")),
    ("DPO implicit-reward accuracy, TL;DR", ("preference_accuracy", "DPO implicit, TL;DR"),
     ("dpo_implicit_accuracy_tldr", "dpo")),
    ("SFT ROUGE-L, validation", ("sft_rougeL",), ("sft_rougeL", "sft")),
    ("SFT response tokens", ("response_tokens", "sft"), ("response_tokens", "sft")),
    ("PPO response tokens", ("response_tokens", "ppo"), ("response_tokens", "ppo")),
)  # fmt: skip
PAPER_SIZES = (("pythia-1b", "paper 1B"), ("pythia-2.8b", "paper 2.8B"), ("pythia-6.9b", "paper 6.9B"))


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 10 else f"{x:.3f}"


def ours_cell(numbers: dict, path: tuple[str, ...], size: str) -> str:
    node = numbers
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return ""
    # numbers.json's size keys are text; in memory, before the JSON round trip, they are ints
    cell = (node.get(size) or node.get(int(size))) if isinstance(node, dict) else None
    if not cell:
        return ""
    text = _fmt(cell["mean"])
    if cell.get("n", 1) > 1:
        text += f" ± {cell['std']:.2g} (n {cell['n']})"
    return text


def paper_cell(paper: list[dict], quantity: str, stage: str, model: str) -> str:
    rows = [r for r in paper if r["quantity"] == quantity and r["stage"] == stage and r["model"] == model]
    if not rows:
        return ""
    if len(rows) > 1:  # per-seed points
        values = [r["value"] for r in rows]
        return f"{_fmt(sum(values) / len(values))} ({_fmt(min(values))}-{_fmt(max(values))}, {len(values)} seeds)"
    r = rows[0]
    if r["error"] is not None:
        return f"{_fmt(r['value'])} ± {_fmt(r['error'])}"
    if r["low"] is not None and r["high"] is not None:
        return f"{_fmt(r['value'])} ({_fmt(r['low'])}-{_fmt(r['high'])})"
    return _fmt(r["value"])


def headline_table(numbers: dict, paper: list[dict]) -> tuple[list[str], list[list[str]]]:
    sizes = sorted(numbers.get("sizes", {}).items(), key=lambda kv: int(kv[0]))
    header = ["quantity"] + [f"ours {model} ({size_label(int(n))})" for n, model in sizes]
    header += [label for _, label in PAPER_SIZES] if paper else []
    rows = []
    for label, ours_path, theirs in HEADLINE:
        cells = [ours_cell(numbers, ours_path, n) for n, _ in sizes]
        if paper:
            cells += [paper_cell(paper, *theirs, model) if theirs else "" for model, _ in PAPER_SIZES]
        if any(cells):
            rows.append([label] + [c or "–" for c in cells])
    return header, rows


def _numbers_text(numbers: dict, keep: int = 6) -> str:
    flat = [(k, v) for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(f"{k} {v}" for k, v in flat[:keep])


def claims_blocks(results: Path) -> list[tuple]:
    blocks: list[tuple] = []
    # results/<experiment>/claims.json of a run, or claims_seed<S>.json of each seed in results/reference
    for path in sorted(results.glob("*/claims*.json")):
        suffix = path.stem[len("claims") :]
        if suffix and not re.fullmatch(r"_seed\d+", suffix):
            continue
        claims = json.loads(path.read_text())
        experiment = path.parent.name
        seed = f" (seed {suffix[len('_seed') :]})" if suffix else ""
        blocks.append(("h3", f"Claims of `{experiment}`{seed}"))
        rows = [
            [str(i), c["claim"], "PASS" if c["passed"] else "FAIL", _numbers_text(c.get("numbers", {}))]
            for i, c in enumerate(claims, 1)
        ]
        blocks.append(("table", ["#", "claim", "verdict", "numbers"], rows))
        controls = path.parent / f"controls{suffix}.json"
        if controls.is_file():
            items = json.loads(controls.read_text())
            why = (
                "Negative controls: each breaks the mechanism behind one claim, and that claim's check must then "
                "FAIL; one that passes would show the check has no teeth."
            )
            blocks.append(("p", why))
            rows = [
                [c["control"], f"{c['claim_number']}. {c['claim']}", "FAIL (as it must)" if c["ok"] else "PASS (!)",
                 _numbers_text(c.get("numbers", {}))]
                for c in items
            ]  # fmt: skip
            blocks.append(("table", ["control", "claim it breaks", "verdict", "numbers"], rows))
    return blocks


def document(results: Path, numbers: dict, captions: dict, paper: list[dict], regenerate: str) -> list[tuple]:
    blocks: list[tuple] = [("h1", "rlhf-repro report")]
    blocks.append(
        ("p", f"{numbers['runs']} finished runs under `{results}`"
         + (f" (headline experiments: {', '.join(numbers['headline_experiments'])})"
            if numbers.get("headline_experiments") else "")
         + f". Regenerate with `{regenerate}`; every number drawn is in `numbers.json`.")
    )  # fmt: skip
    header, rows = headline_table(numbers, paper)
    if rows:
        blocks.append(("h2", "Headline: ours beside the paper"))
        blocks.append(
            ("p", "Ours: the simulated TL;DR world, tiny models on CPU, gold-judged; mean ± std over seeds at each of "
                  "our sizes. The paper: Pythia on real TL;DR, GPT-3.5 judge (results/paper/numbers.csv; ranges "
                  "are read off its figures). The two are different worlds: compare the shape (what rises with "
                  "size, what beats what), not the values.")
        )  # fmt: skip
        blocks.append(("table", header, rows))
    claims = claims_blocks(results)
    if claims:
        blocks.append(("h2", "Claims"))
        blocks += claims
    blocks.append(("h2", "Figures"))
    for name in numbers["figures"]:
        blocks.append(("figure", name, captions.get(name, "")))
    for name, why in numbers.get("not_drawn", {}).items():
        blocks.append(("p", f"Not drawn: {name}, because {why}."))
    return blocks


def _inline_html(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(
        f"<code>{html.escape(p[1:-1])}</code>" if p.startswith("`") and p.endswith("`") else html.escape(p)
        for p in parts
    )


def to_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "figure":
            name, caption = block[1], block[2]
            lines += [f"### {name[:-4]}", "", f"![{name}]({name})", ""] + ([caption, ""] if caption else [])
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.95em; margin-top: 0.3em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def to_html(blocks: list[tuple], out: Path) -> str:
    body: list[str] = []
    title = "rlhf-repro report"
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
            if kind == "h1":
                title = block[1]
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "table":
            header, rows = block[1], block[2]
            body.append("<table><thead><tr>" + "".join(f"<th>{_inline_html(h)}</th>" for h in header) + "</tr></thead>")
            body.append(
                "<tbody>"
                + "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in rows)
                + "</tbody></table>"
            )
        elif kind == "figure":
            name, caption = block[1], block[2]
            data = base64.b64encode((out / name).read_bytes()).decode("ascii")
            body.append(
                f'<figure id="{html.escape(name[:-4])}"><img alt="{html.escape(name[:-4])}" '
                f'src="data:image/png;base64,{data}"><figcaption><b>{html.escape(name[:-4])}</b>. '
                f"{_inline_html(caption)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(out: Path, results: Path, numbers: dict, captions: dict, paper: list[dict], regenerate: str) -> None:
    from rlhf_repro.io import atomic_write_text

    blocks = document(results, numbers, captions, paper, regenerate)
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks, out))
