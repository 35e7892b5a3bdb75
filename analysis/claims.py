"""`rlhf-repro claims RESULTS_DIR --experiment E`: check the paper's qualitative claims on an experiment's
own run folders and print PASS/FAIL with the numbers behind each verdict.

    rlhf-repro claims runs/quickstart/results --experiment quickstart --world runs/quickstart/world

Reads RESULTS/E/{sft,reward,ppo,dpo}/<size>/<seed>/ (summary.json, metrics.jsonl, judged_validation.csv)
and RESULTS/<E>-no-eos-trick/ppo/... for the EOS ablation. Writes, next to them in RESULTS/E/:
- claims.json: a list of {claim, passed, numbers}; claims.md: the same as a table;
- summary.json: the headline number of every stage (ROUGE-L, RM accuracy by confidence and out of
  domain, the gold labeler's ceiling, DPO's implicit accuracy, gold win rates, no-EOS fractions, mean
  response lengths, stage wall-clock).
A claim whose inputs are missing FAILs and says what is missing; no claim is ever dropped. The exit
code is 0 whether claims pass or fail (the verdicts are results, not errors); 2 on unreadable input.

Negative controls (`--control EXPERIMENT:N`, repeatable): the same test of claim N with EXPERIMENT's run
folders in place of the stage the control breaks (claim 1: its RM; 2 and 5: its PPO against this
experiment's SFT; 3: its PPO as the with-trick arm against the no-EOS-trick ablation; 4: its DPO). A
control must FAIL; one that passes shows that the claim's check has no teeth. They go to controls.json
and to a second table in claims.md.

The claims and their tests:
1. RM validation accuracy is well above chance (Wilson 95% lower bound > 0.55) and rises with labeler
   confidence (mean accuracy at confidence 7-9 at least 0.1 above confidence 1-3).
2. PPO beats SFT on gold win rate against the references: the 95% interval of the difference of the
   two win rates (normal approximation) lies above 0.
3. With the EOS trick the share of rollouts without an EOS falls to at most half its start; without the
   trick it stays above half its start and above the trick's (means over the first/last 3 updates).
   Its numbers also carry, as context and never as part of the verdict, the RM's read-out of the SFT
   policy's rollouts that end and of those that run past PPO's response length (`sim rm-agreement`)
   beside the trick's penalty: when the RM already reads unended rollouts below the penalty, PPO without
   the trick is pushed to end at least as hard as with it, and a note says so.
4. DPO's implicit reward is less accurate on the validation pairs than the explicit RM.
5. At equal length (the logistic fit of win ~ log(len response / len reference) at 0, by characters),
   PPO's win rate is above SFT's by more than 0.01 and PPO's bootstrap 95% lower bound is above SFT's
   estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from rlhf_repro.io import InputError, atomic_write_json, atomic_write_text

FIRST_LAST = 3


def _runs(results: Path, experiment: str, stage: str) -> list[Path]:
    return sorted(p.parent for p in (results / experiment / stage).glob("*/*/summary.json"))


def _summary(run: Path) -> dict:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"unreadable summary ({e})", run / "summary.json") from None


def _series(run: Path, key: str) -> list[float]:
    out = []
    path = run / "metrics.jsonl"
    if not path.exists():
        return out
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError("not JSON", path, line=i) from None
        if row.get(key) is not None:
            out.append(float(row[key]))
    return out


def _judged(run: Path, name: str = "judged_validation.csv") -> tuple[np.ndarray, list[dict]] | None:
    from analysis.cli import read_csv, verdicts

    path = run / name
    if not path.exists():
        return None
    rows = read_csv(str(path), ("preferred", "response", "reference"))
    wins, kept, _ = verdicts(rows, str(path))
    return wins, [rows[i] for i in kept]


def _agreement(reward_run: Path, length: str | None = None) -> float | None:
    """The RM's agreement with gold on the SFT policy's own samples (`rlhf-repro sim rm-agreement`): at its
    main response length, or at `length` (a shorter one it also measured, under `at_length`)."""
    path = reward_run / "rm_policy_agreement.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        if length is not None:
            return report.get("at_length", {}).get(length, {}).get("rm_gold_agreement_on_policy_samples")
        return report["rm_gold_agreement_on_policy_samples"]
    except (json.JSONDecodeError, KeyError, AttributeError):
        raise InputError("unreadable rm_policy_agreement.json", path) from None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _r(x, nd=4):
    return None if x is None else round(float(x), nd)


def claim_rm(reward_runs: list[Path]) -> dict:
    from analysis.stats import wilson_interval

    numbers: dict = {}
    if not reward_runs:
        return {"passed": False, "numbers": {"missing": "no finished reward run"}}
    s = [_summary(r) for r in reward_runs]
    acc = _mean(x.get("eval/rm/validation/accuracy") for x in s)
    n = int(sum(x.get("eval/rm/validation/n_pairs", 0) for x in s))
    by_conf = {}
    for k in range(1, 10):
        v = _mean(x.get(f"eval/rm/validation/accuracy/confidence/{k}") for x in s)
        if v is not None:
            by_conf[str(k)] = _r(v)
    low_high = wilson_interval(round(acc * n), n) if acc is not None and n else (None, None)
    lo = _mean(by_conf.get(str(k)) for k in (1, 2, 3))
    hi = _mean(by_conf.get(str(k)) for k in (7, 8, 9))
    numbers = {
        "accuracy": _r(acc),
        "n_pairs": n,
        "wilson_low": _r(low_high[0]),
        "accuracy_confidence_1_3": _r(lo),
        "accuracy_confidence_7_9": _r(hi),
        "by_confidence": by_conf,
    }
    passed = low_high[0] is not None and low_high[0] > 0.55 and lo is not None and hi is not None and hi - lo >= 0.1
    return {"passed": bool(passed), "numbers": numbers}


def _pooled_wins(runs: list[Path], name: str = "judged_validation.csv") -> np.ndarray | None:
    got = [_judged(r, name) for r in runs]
    got = [g for g in got if g is not None]
    return np.concatenate([g[0] for g in got]) if got else None


def claim_gold_win_rate(sft_runs: list[Path], ppo_runs: list[Path]) -> dict:
    sft, ppo = _pooled_wins(sft_runs), _pooled_wins(ppo_runs)
    if sft is None or ppo is None or not len(sft) or not len(ppo):
        return {"passed": False, "numbers": {"missing": "judged_validation.csv of SFT and PPO"}}
    p1, p2 = float(ppo.mean()), float(sft.mean())
    se = math.sqrt(p1 * (1 - p1) / len(ppo) + p2 * (1 - p2) / len(sft))
    diff = p1 - p2
    numbers = {
        "ppo_win_rate": _r(p1),
        "sft_win_rate": _r(p2),
        "difference": _r(diff),
        "difference_ci_low": _r(diff - 1.96 * se),
        "difference_ci_high": _r(diff + 1.96 * se),
        "n_ppo": len(ppo),
        "n_sft": len(sft),
    }
    return {"passed": bool(diff - 1.96 * se > 0), "numbers": numbers}


def _readout(reward_runs: list[Path], ppo_runs: list[Path]) -> dict:
    """The RM's mean read-out of the SFT policy's rollouts that end with an EOS and of those that run past
    PPO's response length (`sim rm-agreement`, at that length), beside the EOS trick's penalty: context for
    claim 3, never part of its verdict. Empty when the agreement report or the PPO config is missing."""
    try:
        config = json.loads((ppo_runs[0] / "config.json").read_text()) if ppo_runs else {}
    except (OSError, json.JSONDecodeError):
        return {}
    length = config.get("response_length")
    ended, unended = [], []
    for run in reward_runs:
        path = run / "rm_policy_agreement.json"
        if not path.exists() or length is None:
            continue
        try:
            report = json.loads(path.read_text())
            at = report if report.get("response_length") == length else report.get("at_length", {}).get(str(length))
            if at:
                ended.append(None if at.get("rm_score_ended") is None else float(at["rm_score_ended"]))
                unended.append(None if at.get("rm_score_no_eos") is None else float(at["rm_score_no_eos"]))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise InputError("unreadable rm_policy_agreement.json", path) from None
    out = {"rm_readout_ended": _r(_mean(ended)), "rm_readout_no_eos": _r(_mean(unended))}
    if out["rm_readout_ended"] is None and out["rm_readout_no_eos"] is None:
        return {}
    # The penalty is a score to compare the read-out with only when the trick replaces the score (detail 23).
    if config.get("non_eos_penalty", True) and config.get("penalty_mode", "replace") == "replace":
        out["eos_trick_penalty"] = config.get("penalty_reward_value")
    return out


def claim_eos(ppo_runs: list[Path], ablation_runs: list[Path], reward_runs: list[Path] = ()) -> dict:
    def first_last(runs):
        series = [_series(r, "ppo/val/no_eos_fraction") for r in runs]
        series = [s for s in series if s]
        if not series:
            return None, None, 0
        return (
            _mean(np.mean(s[:FIRST_LAST]) for s in series),
            _mean(np.mean(s[-FIRST_LAST:]) for s in series),
            min(len(s) for s in series),
        )

    t_first, t_last, t_n = first_last(ppo_runs)
    a_first, a_last, a_n = first_last(ablation_runs)
    numbers = {
        "with_trick_first": _r(t_first),
        "with_trick_last": _r(t_last),
        "without_trick_first": _r(a_first),
        "without_trick_last": _r(a_last),
        "updates": min(t_n, a_n) if t_n and a_n else max(t_n, a_n),
    }
    if t_first is None or a_first is None:
        numbers["missing"] = "ppo/val/no_eos_fraction of the PPO run and of its -no-eos-trick ablation"
        return {"passed": False, "numbers": numbers}
    passed = t_last <= 0.5 * t_first and a_last > 0.5 * a_first and a_last > t_last and t_first > 0.05
    numbers |= _readout(list(reward_runs), ppo_runs)
    if t_first <= 0.05:
        numbers["note"] = "the SFT policy already ends nearly every rollout: nothing for the trick to do"
    elif (
        numbers.get("rm_readout_no_eos") is not None
        and numbers.get("eos_trick_penalty") is not None
        and numbers["rm_readout_no_eos"] < numbers["eos_trick_penalty"]
    ):
        # Details 12, 13, 23: the RM's read-out at a token that is not an EOS is untrained; when it sits
        # below the trick's penalty, the RM alone already punishes running past the end harder than the trick.
        numbers["note"] = (
            "the RM reads unended rollouts below the EOS trick's penalty, so PPO without the trick is pushed to "
            "end at least as hard as with it"
        )
    return {"passed": bool(passed), "numbers": numbers}


def claim_dpo(reward_runs: list[Path], dpo_runs: list[Path]) -> dict:
    rm = _mean(_summary(r).get("eval/rm/validation/accuracy") for r in reward_runs)
    dpo = _mean(_summary(r).get("eval/rm/validation/accuracy") for r in dpo_runs)
    numbers = {"rm_accuracy": _r(rm), "dpo_implicit_accuracy": _r(dpo)}
    if rm is None or dpo is None:
        numbers["missing"] = "validation accuracy of the reward and DPO runs"
        return {"passed": False, "numbers": numbers}
    return {"passed": bool(dpo < rm), "numbers": numbers}


def _length_controlled(runs: list[Path]) -> dict | None:
    from analysis.stats import length_control

    xs, ws = [], []
    for r in runs:
        got = _judged(r)
        if got is None:
            continue
        wins, rows = got
        lr = np.array([len(x["response"].strip()) for x in rows], dtype=float)
        lf = np.array([len(x["reference"].split("<|endoftext|>")[0].strip()) for x in rows], dtype=float)
        ok = (lr > 0) & (lf > 0)
        xs.append(np.log(lr[ok] / lf[ok]))
        ws.append(wins[ok])
    if not xs:
        return None
    return length_control(np.concatenate(xs), np.concatenate(ws), seed=0, n_boot=300)


def claim_length_control(sft_runs: list[Path], ppo_runs: list[Path]) -> dict:
    sft, ppo = _length_controlled(sft_runs), _length_controlled(ppo_runs)
    if sft is None or ppo is None:
        return {"passed": False, "numbers": {"missing": "judged_validation.csv of SFT and PPO"}}
    numbers = {
        "ppo_at_equal_length": _r(ppo["win_rate_at_equal_length"]),
        "ppo_ci_low": _r(ppo["ci_low"]),
        "ppo_ci_high": _r(ppo["ci_high"]),
        "sft_at_equal_length": _r(sft["win_rate_at_equal_length"]),
        "sft_ci_low": _r(sft["ci_low"]),
        "sft_ci_high": _r(sft["ci_high"]),
        "ppo_mean_log_length_ratio": _r(ppo["mean_log_length_ratio"]),
        "sft_mean_log_length_ratio": _r(sft["mean_log_length_ratio"]),
    }
    # A real gap, not float dust: two policies that never win both fit to about 0.
    gap = ppo["win_rate_at_equal_length"] - sft["win_rate_at_equal_length"]
    passed = ppo["ci_low"] > sft["win_rate_at_equal_length"] and gap > 0.01
    return {"passed": bool(passed), "numbers": numbers}


CLAIMS = (
    "RM validation accuracy is well above chance and rises with labeler confidence",
    "PPO beats SFT on gold win rate against the reference summaries",
    "with the EOS trick the no-EOS fraction goes toward zero; without it, it does not",
    "DPO's implicit RM is less accurate than the explicit RM",
    "at equal length (length-controlled), PPO still beats SFT",
)


def check_claims(results: Path, experiment: str, ablation: str) -> list[dict]:
    sft, rm = _runs(results, experiment, "sft"), _runs(results, experiment, "reward")
    ppo, dpo = _runs(results, experiment, "ppo"), _runs(results, experiment, "dpo")
    abl = _runs(results, ablation, "ppo")
    verdicts = [
        claim_rm(rm),
        claim_gold_win_rate(sft, ppo),
        claim_eos(ppo, abl, rm),
        claim_dpo(rm, dpo),
        claim_length_control(sft, ppo),
    ]
    return [{"claim": c, **v} for c, v in zip(CLAIMS, verdicts)]


def headline_summary(results: Path, experiment: str, ablation: str, world: Path | None) -> dict:
    """The headline number of every stage (means over the experiment's runs)."""
    runs = {s: _runs(results, experiment, s) for s in ("sft", "reward", "ppo", "dpo")}
    sums = {s: [_summary(r) for r in rs] for s, rs in runs.items()}
    rm = sums["reward"]
    out: dict = {
        "experiment": experiment,
        "runs": {s: [str(r) for r in rs] for s, rs in runs.items()},
        "base_rougeL": _r(_mean(x.get("start/validation/sft/rouge/rougeL") for x in sums["sft"])),
        "sft_rougeL": _r(_mean(x.get("validation/sft/rouge/rougeL") for x in sums["sft"])),
        "rm_accuracy": _r(_mean(x.get("eval/rm/validation/accuracy") for x in rm)),
        "rm_accuracy_by_confidence": {
            str(k): _r(_mean(x.get(f"eval/rm/validation/accuracy/confidence/{k}") for x in rm))
            for k in range(1, 10)
            if any(f"eval/rm/validation/accuracy/confidence/{k}" in x for x in rm)
        },
        "rm_accuracy_ood": _r(_mean(x.get("eval/rm/validation_cnndm/accuracy") for x in rm)),
        "rm_gold_agreement_on_policy_samples": _r(_mean(_agreement(r) for r in runs["reward"])),
        "rm_gold_agreement_at_rollout_length": {},
        "gold_ceiling_accuracy": None,
        "dpo_implicit_accuracy": _r(_mean(x.get("eval/rm/validation/accuracy") for x in sums["dpo"])),
        "gold_win_rate": {},
        "gold_score": {},
        "no_eos_fraction": {},
        "mean_response_length": {},
        "stage_seconds": {},
    }
    lengths = set()
    for r in runs["reward"]:
        path = r / "rm_policy_agreement.json"
        if path.exists():
            try:
                found = set(json.loads(path.read_text()).get("at_length", {}))
                [int(x) for x in found]
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
                raise InputError("unreadable rm_policy_agreement.json", path) from None
            lengths |= found
    for length in sorted(lengths, key=int):
        out["rm_gold_agreement_at_rollout_length"][length] = _r(_mean(_agreement(r, length) for r in runs["reward"]))
    if world is not None and (world / "world.json").exists():
        info = json.loads((world / "world.json").read_text())
        out["gold_ceiling_accuracy"] = _r(info["gold_accuracy_validation"]["all"]["accuracy"])
        refs = info.get("reference_gold_scores", {})
        out["reference_gold_score"] = {
            k: refs[k] for k in ("mean", "mean_fraction_of_max", "perfect_share") if k in refs
        }
    policies = {"sft": runs["sft"], "ppo": runs["ppo"], "dpo": runs["dpo"], "ppo_no_eos_trick": []}
    policies["ppo_no_eos_trick"] = _runs(results, ablation, "ppo")
    for name, rs in policies.items():
        wins = _pooled_wins(rs)
        if wins is not None and len(wins):
            out["gold_win_rate"][name] = _r(wins.mean())
        scores = []
        for r in rs:
            got = _judged(r)
            if got is not None:
                scores += [
                    float(x["judge_policy_score"]) for x in got[1] if x.get("judge_policy_score") not in (None, "")
                ]
        if scores:
            out["gold_score"][name] = _r(np.mean(scores))
        stage = "ppo" if name.startswith("ppo") else name
        lens = [_summary(r).get(f"validation/{stage}/response_token_len") for r in rs]
        if _mean(lens) is not None:
            out["mean_response_length"][name] = _r(_mean(lens), 2)
    # The pretrained-only model (SFT's evaluation before training, --eval-at-start): it must lose to the
    # references, as an untuned base model does.
    base = [_judged(r, "judged_validation_start.csv") for r in runs["sft"]]
    base = [b for b in base if b is not None]
    if base:
        out["gold_win_rate"]["base"] = _r(np.concatenate([w for w, _ in base]).mean())
        pairs = [
            (float(x["judge_policy_score"]), float(x["judge_reference_score"]))
            for _, rows in base
            for x in rows
            if x.get("judge_policy_score") not in (None, "")
        ]
        if pairs:
            out["gold_score"]["base"] = _r(np.mean([p for p, _ in pairs]))
            out["base_loses_to_reference_share"] = _r(np.mean([p < q for p, q in pairs]))
    for name in ("ppo", "ppo_no_eos_trick"):
        series = [_series(r, "ppo/val/no_eos_fraction") for r in policies[name]]
        series = [s for s in series if s]
        if series:
            out["no_eos_fraction"][name] = _r(_mean(np.mean(s[-FIRST_LAST:]) for s in series))
    for stage, rs in runs.items():
        secs = [_summary(r).get("seconds") for r in rs]
        if _mean(secs) is not None:
            out["stage_seconds"][stage] = _r(_mean(secs), 1)
    if policies["ppo_no_eos_trick"]:
        secs = [_summary(r).get("seconds") for r in policies["ppo_no_eos_trick"]]
        out["stage_seconds"]["ppo_no_eos_trick"] = _r(_mean(secs), 1)
    return out


def check_controls(results: Path, experiment: str, ablation: str, controls: list[tuple[str, int]]) -> list[dict]:
    """Each control's verdict on the claim it breaks (see the module docstring); `ok` when it FAILs."""
    sft, rm = _runs(results, experiment, "sft"), _runs(results, experiment, "reward")
    out = []
    for name, number in controls:
        if number == 1:
            verdict = claim_rm(_runs(results, name, "reward"))
        elif number == 2:
            verdict = claim_gold_win_rate(sft, _runs(results, name, "ppo"))
        elif number == 3:
            verdict = claim_eos(_runs(results, name, "ppo"), _runs(results, ablation, "ppo"), rm)
        elif number == 4:
            verdict = claim_dpo(rm, _runs(results, name, "dpo"))
        else:
            verdict = claim_length_control(sft, _runs(results, name, "ppo"))
        out.append({"control": name, "claim_number": number, "claim": CLAIMS[number - 1], **verdict})
        out[-1]["ok"] = not verdict["passed"]
    return out


def parse_control(text: str) -> tuple[str, int]:
    name, _, number = text.rpartition(":")
    if not name or number not in {"1", "2", "3", "4", "5"}:
        raise InputError(f"--control {text!r}: expected EXPERIMENT:N with N one of 1-5")
    return name, int(number)


def controls_markdown(controls: list[dict]) -> str:
    lines = [
        "| control | claim it breaks | verdict (must be FAIL) | numbers |",
        "|---|---|---|---|",
    ]
    for c in controls:
        nums = ", ".join(f"{k} {v}" for k, v in c["numbers"].items() if not isinstance(v, dict))
        verdict = "FAIL (as it must)" if c["ok"] else "PASS (the check has no teeth)"
        lines.append(f"| {c['control']} | {c['claim_number']}. {c['claim']} | {verdict} | {nums} |")
    return "\n".join(lines) + "\n"


def claims_markdown(claims: list[dict]) -> str:
    lines = ["| # | claim | verdict | numbers |", "|---|---|---|---|"]
    for i, c in enumerate(claims, start=1):
        nums = ", ".join(f"{k} {v}" for k, v in c["numbers"].items() if not isinstance(v, dict))
        lines.append(f"| {i} | {c['claim']} | {'PASS' if c['passed'] else 'FAIL'} | {nums} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rlhf-repro claims", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", help="results directory holding <experiment>/<stage>/<size>/<seed>/ run folders")
    p.add_argument("--experiment", default="quickstart", help="the experiment whose claims are checked")
    p.add_argument("--ablation", default=None, help="experiment of the no-EOS-trick PPO (default E-no-eos-trick)")
    p.add_argument("--world", default=None, help="simulated world directory (for the gold labeler's ceiling)")
    p.add_argument("--out", default=None, help="folder for claims.json/.md and summary.json (default RESULTS/E)")
    p.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="EXPERIMENT:N",
        help="a negative control: EXPERIMENT's runs must FAIL claim N (repeatable; see above)",
    )
    args = p.parse_args(argv)
    results = Path(args.results)
    ablation = args.ablation or f"{args.experiment}-no-eos-trick"
    try:
        if not (results / args.experiment).is_dir():
            raise InputError(f"no experiment folder {args.experiment!r}", results)
        controls = [parse_control(c) for c in args.control]
        claims = check_claims(results, args.experiment, ablation)
        control_verdicts = check_controls(results, args.experiment, ablation, controls)
        summary = headline_summary(results, args.experiment, ablation, Path(args.world) if args.world else None)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else results / args.experiment
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "claims.json", claims)
    md = claims_markdown(claims)
    text = f"# Claims of `{args.experiment}`\n\n{md}"
    if control_verdicts:
        atomic_write_json(out / "controls.json", control_verdicts)
        cmd = controls_markdown(control_verdicts)
        text += (
            "\n## Negative controls\n\nEach control breaks the mechanism behind one claim; the claim's check "
            f"must FAIL on it.\n\n{cmd}"
        )
        summary["controls_failing_as_they_must"] = f"{sum(c['ok'] for c in control_verdicts)}/{len(control_verdicts)}"
    atomic_write_text(out / "claims.md", text)
    atomic_write_json(out / "summary.json", summary)
    print(md, end="")
    if control_verdicts:
        print(cmd, end="")
    passed = sum(c["passed"] for c in claims)
    wrote = ", ".join(str(out / f) for f in ("claims.json", "claims.md", "summary.json"))
    if control_verdicts:
        ok = sum(c["ok"] for c in control_verdicts)
        print(f"{ok}/{len(control_verdicts)} negative controls fail as they must; ", end="")
        wrote += f", {out / 'controls.json'}"
    print(f"{passed}/{len(claims)} claims pass; wrote {wrote}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
