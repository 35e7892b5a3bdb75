"""The gold labeler of the simulated world: it reads the facts off a post and scores a summary.

score = coverage of the post's facts (weighted; a perfect summary scores 8)
        - 1.5 per contradicted fact (a value of the right category that the post does not state)
        - 0.5 per irrelevant detail (a distractor keyword or a filler opener's words), at most 3
        - 0.5 per repeated word trigram, at most 4
        - 0.15 per word beyond the budget (40 words: every complete summary fits)
        - 1 when the summary does not end a sentence (cut off mid-way)

It needs nothing but the two texts, so it scores human references, policy samples and model
outputs alike. `prefer` turns scores into a Bradley-Terry preference, as a human labeler with
noise would give it; `GoldJudge` is the noiseless pairwise judge.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from rlhf_repro.sim import vocab as V

TLDR_WEIGHTS = {"ages": 2.0, "role": 1.0, "duration": 1.0, "event": 2.0, "problem": 1.0, "question": 1.0}
NEWS_WEIGHTS = {"official": 1.0, "person": 2.0, "action": 2.0, "place": 1.0, "day": 0.5, "amount": 1.5}
CONTRADICTION_PENALTY = 1.5
IRRELEVANT_PENALTY, IRRELEVANT_CAP = 0.5, 3.0
REPEAT_PENALTY, REPEAT_CAP = 0.5, 4.0
WORD_BUDGET, LENGTH_PENALTY = 40, 0.15
UNFINISHED_PENALTY = 1.0

AGE_RE = re.compile(r"\((\d{1,2}) ?([MF])\)")
DURATION_RE = re.compile(r"\b(\d{1,2}) (weeks|months|years)\b")
AMOUNT_RE = re.compile(r"\$(\d{1,3}) million")


def _phrase_re(phrases) -> re.Pattern:
    # Longest first so "best friend" wins over "friend"; word boundaries so "friend" never matches
    # inside "girlfriend".
    ordered = sorted(phrases, key=len, reverse=True)
    return re.compile(r"(?<![\w])(" + "|".join(re.escape(p) for p in ordered) + r")(?![\w])", re.IGNORECASE)


PHRASES = {
    "role": _phrase_re(V.ROLES),
    "event": _phrase_re(V.EVENTS),
    "problem": _phrase_re(V.PROBLEMS),
    "question": _phrase_re(V.QUESTIONS),
    "official": _phrase_re(V.OFFICIALS),
    "person": _phrase_re(V.SURNAMES),
    "action": _phrase_re(V.ACTIONS),
    "place": _phrase_re(V.NEWS_PLACES),
    "day": _phrase_re(V.DAYS),
}
TLDR_IRRELEVANT = _phrase_re(V.FIRST_NAMES + V.CITIES + V.JOBS + V.HOBBIES + V.FOODS + V.PETS + V.FILLER_MARKERS)
NEWS_IRRELEVANT = _phrase_re(V.NEWS_MARKERS + V.FIRST_NAMES)


def _find_all(key: str, text: str) -> list[str]:
    if key == "ages":
        return [f"{a} {g}" for a, g in AGE_RE.findall(text)]
    if key == "duration":
        return [f"{n} {u}" for n, u in DURATION_RE.findall(text)]
    if key == "amount":
        return [f"${n} million" for n in AMOUNT_RE.findall(text)]
    return [m.lower() for m in PHRASES[key].findall(text)]


def domain_of(post: str) -> str:
    return "tldr" if AGE_RE.search(post) else "news"


def extract_facts(post: str) -> dict[str, list[str]]:
    """The facts a post states, by category (a list: ages hold two values)."""
    weights = TLDR_WEIGHTS if domain_of(post) == "tldr" else NEWS_WEIGHTS
    facts = {}
    for key in weights:
        found = _find_all(key, post)
        if key == "ages":
            facts[key] = found[:2]
        elif found:
            facts[key] = found[:1]
    return facts


@dataclass
class ScoreDetail:
    score: float
    coverage: float
    covered: dict[str, float]
    contradictions: int
    irrelevant: int
    repeats: int
    words: int
    unfinished: bool


def score_detail(post: str, summary: str) -> ScoreDetail:
    domain = domain_of(post)
    weights = TLDR_WEIGHTS if domain == "tldr" else NEWS_WEIGHTS
    facts = extract_facts(post)
    covered, contradictions = {}, 0
    for key, weight in weights.items():
        truth = facts.get(key, [])
        said = _find_all(key, summary)
        if not truth:
            covered[key] = 0.0
            continue
        hits = sum(1 for t in truth if t in said)
        covered[key] = weight * hits / len(truth)
        contradictions += len({s for s in said if s not in truth})
    irrelevant_re = TLDR_IRRELEVANT if domain == "tldr" else NEWS_IRRELEVANT
    irrelevant = len({m.lower() for m in irrelevant_re.findall(summary)})
    words = summary.split()
    lowered = [w.lower().strip(".,!?") for w in words]
    trigrams = [tuple(lowered[i : i + 3]) for i in range(len(lowered) - 2)]
    repeats = len(trigrams) - len(set(trigrams))
    unfinished = bool(words) and not summary.rstrip().endswith((".", "?", "!"))
    coverage = sum(covered.values())
    score = (
        coverage
        - CONTRADICTION_PENALTY * contradictions
        - min(IRRELEVANT_CAP, IRRELEVANT_PENALTY * irrelevant)
        - min(REPEAT_CAP, REPEAT_PENALTY * repeats)
        - LENGTH_PENALTY * max(0, len(words) - WORD_BUDGET)
        - (UNFINISHED_PENALTY if unfinished else 0.0)
    )
    return ScoreDetail(
        score=round(score, 6),
        coverage=coverage,
        covered=covered,
        contradictions=contradictions,
        irrelevant=irrelevant,
        repeats=repeats,
        words=len(words),
        unfinished=unfinished,
    )


def gold_score(post: str, summary: str) -> float:
    """The gold reward of `summary` for `post` (higher is better; a perfect summary scores 8)."""
    return score_detail(post, summary).score


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def preference_probability(score_a: float, score_b: float, sharpness: float) -> float:
    """Bradley-Terry probability that a labeler of this sharpness prefers a over b."""
    return sigmoid(sharpness * (score_a - score_b))


def confidence_from_margin(logit_margin: float) -> int:
    """Labeler confidence 1..9 from the perceived logit margin: 1 at a coin flip, 9 when certain."""
    return max(1, min(9, 1 + int(abs(logit_margin) * 2.0)))


def prefer(score_a: float, score_b: float, sharpness: float, rng: random.Random) -> tuple[int, int]:
    """A noisy labeler's (choice, confidence): choice 0 picks a, 1 picks b."""
    p_a = preference_probability(score_a, score_b, sharpness)
    choice = 0 if rng.random() < p_a else 1
    perceived = sharpness * (score_a - score_b) + rng.gauss(0.0, 0.5)
    return choice, confidence_from_margin(perceived)


class GoldJudge:
    """Noiseless pairwise judge: prefers the summary with the higher gold score (ties -> `a`)."""

    name = "gold"

    def score(self, post: str, summary: str) -> float:
        return gold_score(post, summary)

    def judge(self, post: str, summary_a: str, summary_b: str) -> int:
        """0 when a is preferred, 1 when b is."""
        return 0 if gold_score(post, summary_a) >= gold_score(post, summary_b) else 1
