"""Statistics behind the report: win rates with intervals, the length-controlled fit, RM calibration.

Everything here is plain numpy on per-row arrays, with slow obvious equivalents in the unit tests.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(wins: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (0, 1 when n == 0)."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values: np.ndarray, stat=np.mean, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05):
    """Percentile bootstrap interval of stat(values), resampling rows with replacement."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = np.array([stat(values[i]) for i in idx])
    return float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def win_rate(wins: np.ndarray, seed: int = 0, n_boot: int = 2000) -> dict:
    """wins: 1 where the policy won, 0 where the reference did (rows without a verdict left out)."""
    wins = np.asarray(wins, dtype=float)
    n = len(wins)
    lo, hi = bootstrap_ci(wins, n_boot=n_boot, seed=seed)
    w_lo, w_hi = wilson_interval(float(wins.sum()), n)
    return {
        "win_rate": float(wins.mean()) if n else float("nan"),
        "n": n,
        "ci_low": lo,
        "ci_high": hi,
        "wilson_low": w_lo,
        "wilson_high": w_hi,
    }


def fit_logistic(x: np.ndarray, y: np.ndarray, iters: int = 100, tol: float = 1e-10) -> tuple[float, float]:
    """Maximum-likelihood logistic regression y ~ 1 + x by Newton's method; (intercept, slope).

    A tiny ridge (1e-9) keeps separable data finite."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    X = np.stack([np.ones_like(x), x], 1)
    beta = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ beta, -500, 500)))
        grad = X.T @ (y - p) - 1e-9 * beta
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta = beta + step
        if np.abs(step).max() < tol:
            break
    return float(beta[0]), float(beta[1])


def reference_bins(x: np.ndarray, wins: np.ndarray, n_edges: int = 10) -> dict:
    """The reference's binning (§4.7): 10 equally spaced edges from min(x) to max(x), np.digitize, bin
    index - 1; the maximum lands alone in the last bin. Per bin: left edge, count, win fraction."""
    x, wins = np.asarray(x, dtype=float), np.asarray(wins, dtype=float)
    edges = np.linspace(x.min(), x.max(), n_edges)
    index = np.digitize(x, edges) - 1
    counts, fractions = [], []
    for b in range(n_edges):
        sel = index == b
        counts.append(int(sel.sum()))
        fractions.append(float(wins[sel].mean()) if sel.any() else None)
    return {"edges": edges.tolist(), "counts": counts, "win_fractions": fractions}


def length_control(x: np.ndarray, wins: np.ndarray, seed: int = 0, n_boot: int = 1000) -> dict:
    """Per-sample logistic fit win ~ 1 + x with bootstrap CIs; the win rate at equal length (x = 0)."""
    x, wins = np.asarray(x, dtype=float), np.asarray(wins, dtype=float)
    a, b = fit_logistic(x, wins)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        boots.append(fit_logistic(x[i], wins[i]))
    boots = np.array(boots)
    at_zero = 1 / (1 + np.exp(-np.clip(boots[:, 0], -500, 500)))
    return {
        "n": len(x),
        "intercept": a,
        "slope": b,
        "slope_ci_low": float(np.quantile(boots[:, 1], 0.025)),
        "slope_ci_high": float(np.quantile(boots[:, 1], 0.975)),
        "win_rate_at_equal_length": 1 / (1 + math.exp(-a)),
        "ci_low": float(np.quantile(at_zero, 0.025)),
        "ci_high": float(np.quantile(at_zero, 0.975)),
        "mean_log_length_ratio": float(x.mean()),
        "bins": reference_bins(x, wins),
    }


def calibration(margin: np.ndarray, correct: np.ndarray, width: float = 0.5, n_equal: int = 10) -> dict:
    """RM calibration (detail 18). Accuracy against |margin| (§4.6): the reference's 0.5-wide bins up to the
    99.5th percentile (rounded up to 0.5) next to sigmoid(bin midpoint), equal-count bins, ECE and Brier score of the
    predicted probability sigmoid(|margin|) for 'the RM ranked the pair right'."""
    m, correct = np.abs(np.asarray(margin, dtype=float)), np.asarray(correct, dtype=float)
    top = max(width, math.ceil(np.quantile(m, 0.995) / width) * width)
    edges = np.arange(0.0, top + width / 2, width)
    wide = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (m >= lo) & (m < hi)
        mid = (lo + hi) / 2
        wide.append(
            {
                "low": float(lo),
                "high": float(hi),
                "n": int(sel.sum()),
                "accuracy": float(correct[sel].mean()) if sel.any() else None,
                "perfect": 1 / (1 + math.exp(-mid)),
            }
        )
    prob = 1 / (1 + np.exp(-m))
    order = np.argsort(m, kind="stable")
    equal = []
    ece = 0.0
    for chunk in np.array_split(order, min(n_equal, len(m))):
        if len(chunk) == 0:
            continue
        acc, conf = float(correct[chunk].mean()), float(prob[chunk].mean())
        ece += len(chunk) / len(m) * abs(acc - conf)
        equal.append({"n": len(chunk), "mean_abs_margin": float(m[chunk].mean()), "accuracy": acc, "predicted": conf})
    mean_gap = float((prob - correct).mean())
    return {
        "n": len(m),
        "accuracy": float(correct.mean()),
        "width_bins": wide,
        "equal_count_bins": equal,
        "ece": ece,
        "brier": float(((prob - correct) ** 2).mean()),
        "confidence": "over" if mean_gap > 0 else "under",
        "mean_confidence_minus_accuracy": mean_gap,
    }
