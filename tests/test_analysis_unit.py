"""Unit tests of analysis/stats.py against hand-computed values and slow obvious versions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import stats

pytestmark = pytest.mark.unit


def test_wilson_interval_matches_the_textbook_formula():
    # 7 wins of 10, z = 1.96: centre (0.7 + 1.96^2/20) / (1 + 1.96^2/10)
    z = stats.Z95
    lo, hi = stats.wilson_interval(7, 10)
    centre = (0.7 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.7 * 0.3 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (lo, hi) == pytest.approx((centre - half, centre + half))
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    assert stats.wilson_interval(0, 5)[0] == 0.0 and stats.wilson_interval(5, 5)[1] == 1.0


def test_win_rate_and_bootstrap_ci_cover_the_mean():
    wins = np.array([1] * 30 + [0] * 70)
    r = stats.win_rate(wins, seed=1)
    assert r["win_rate"] == 0.3 and r["n"] == 100
    assert r["ci_low"] < 0.3 < r["ci_high"] and r["ci_high"] - r["ci_low"] == pytest.approx(0.18, abs=0.04)
    assert r == stats.win_rate(wins, seed=1)  # seeded


def slow_logistic(x, y, steps=20000, lr=0.5):
    a = b = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(a + b * x)))
        a += lr * np.mean(y - p)
        b += lr * np.mean((y - p) * x)
    return a, b


def test_logistic_fit_matches_gradient_ascent_and_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.5 + 2.0 * x)))).astype(float)
    a, b = stats.fit_logistic(x, y)
    sa, sb = slow_logistic(x, y)
    assert (a, b) == pytest.approx((sa, sb), abs=1e-3)
    assert a == pytest.approx(0.5, abs=0.3) and b == pytest.approx(2.0, abs=0.5)


def test_reference_bins_put_the_maximum_alone_in_the_last_bin():
    x = np.array([0.0, 0.1, 0.5, 0.89, 0.9, 0.95, 1.0])
    wins = np.array([0, 1, 1, 0, 1, 1, 1])
    b = stats.reference_bins(x, wins, n_edges=10)
    assert b["edges"] == pytest.approx(np.linspace(0, 1, 10).tolist())
    assert sum(b["counts"]) == 7 and b["counts"][-1] == 1 and b["win_fractions"][-1] == 1.0
    # 0.89 and 0.9 (edges 8/9 = 0.889) share bin 8 with 0.95; 0.0 and 0.1 share bin 0.
    assert b["counts"][0] == 2 and b["win_fractions"][0] == 0.5 and b["counts"][8] == 3


def test_length_control_reports_the_win_rate_at_equal_length():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 600)
    wins = (rng.random(600) < 1 / (1 + np.exp(-(0.0 + 3.0 * x)))).astype(float)
    r = stats.length_control(x, wins, n_boot=200)
    assert r["win_rate_at_equal_length"] == pytest.approx(0.5, abs=0.08)
    assert r["ci_low"] < r["win_rate_at_equal_length"] < r["ci_high"] and r["slope"] > 2


def test_calibration_of_a_perfectly_calibrated_rm_has_small_ece():
    rng = np.random.default_rng(2)
    margin = rng.exponential(1.5, 20000) * rng.choice([-1, 1], 20000)
    correct = (rng.random(20000) < 1 / (1 + np.exp(-np.abs(margin)))).astype(float)
    r = stats.calibration(margin, correct)
    assert r["ece"] < 0.02 and r["width_bins"][0]["low"] == 0.0 and r["width_bins"][0]["high"] == 0.5
    assert abs(r["width_bins"][0]["accuracy"] - r["width_bins"][0]["perfect"]) < 0.03
    over = stats.calibration(margin * 3, correct)  # same accuracy, three times the margins
    assert over["confidence"] == "over" and over["ece"] > r["ece"]
    # Brier by hand on two pairs
    r2 = stats.calibration(np.array([0.0, 2.0]), np.array([1.0, 0.0]))
    p = 1 / (1 + math.exp(-2))
    assert r2["brier"] == pytest.approx(((0.5 - 1) ** 2 + p**2) / 2)
