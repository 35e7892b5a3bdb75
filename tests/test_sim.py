"""The simulated TL;DR world: facts recoverable from text, labeler scores by hand, determinism."""

import json
import random

import pytest

from rlhf_repro.sim import world as W
from rlhf_repro.sim.generate import generate_world
from rlhf_repro.sim.labeler import GoldJudge, confidence_from_margin, extract_facts, gold_score, score_detail

pytestmark = pytest.mark.unit

POST = (
    "I (24 M) and my girlfriend (23 F) of 9 months live together. I work as a nurse in Boston.\n\n"
    "Last week she forgot my birthday.\n\nNow I feel ignored.\n\nQuestion: Should I say something?"
)
PERFECT = (
    "I (24 M) and my girlfriend (23 F) of 9 months. Then she forgot my birthday. Now I feel ignored. "
    "Question: Should I say something?"
)


def test_perfect_summary_scores_eight():
    d = score_detail(POST, PERFECT)
    assert d.score == 8.0 and d.contradictions == 0 and d.irrelevant == 0 and not d.unfinished


def test_penalties_by_hand():
    # wrong narrator age: loses that age's coverage (1) and one contradiction (1.5) -> 5.5
    assert gold_score(POST, PERFECT.replace("24 M", "27 M")) == pytest.approx(5.5)
    # an irrelevant detail from the post: -0.5 per distractor keyword ("nurse", "Boston") -> 7.0
    assert gold_score(POST, PERFECT + " I work as a nurse in Boston.") == pytest.approx(7.0)
    # cut mid-sentence: loses problem (1) and question (1), unfinished (-1) -> 5.0
    assert gold_score(
        POST, "I (24 M) and my girlfriend (23 F) of 9 months. Then she forgot my birthday. Now"
    ) == pytest.approx(5.0)
    # a filler opener is an irrelevant detail (-0.5); leaving out the question loses its 1 point
    assert gold_score(POST, "So basically, " + PERFECT) == pytest.approx(7.5)
    assert gold_score(POST, PERFECT.replace(" Question: Should I say something?", "")) == pytest.approx(7.0)
    # "friend" does not match inside "girlfriend", and a wrong role is a contradiction
    assert gold_score(POST, PERFECT.replace("girlfriend", "sister")) == pytest.approx(8.0 - 1.0 - 1.5)
    assert gold_score(POST, "") == 0.0


def test_repetition_and_length_penalties():
    looped = PERFECT + " She forgot my birthday. She forgot my birthday."
    d = score_detail(POST, looped)
    assert d.repeats > 0 and d.score < 8.0
    # words over the budget of 40 cost 0.15 each (no repeated trigram here)
    long = PERFECT + " It happened right before our anniversary dinner."
    d = score_detail(POST, long)
    assert d.words == 32 and d.score == 8.0
    longer = long + " We planned it for weeks and invited my whole family over."
    d = score_detail(POST, longer)
    assert d.words == 43 and d.repeats == 0 and d.score == pytest.approx(8.0 - 0.15 * 3)


def test_facts_of_generated_posts_are_recovered_from_text():
    for i in range(400):
        rng = random.Random(i)
        post = W.make_tldr_post(rng)
        f = extract_facts(post.body)
        assert sorted(f["ages"]) == sorted([post.facts.narrator_age, post.facts.other_age])
        assert f["role"] == [post.facts.role] and f["duration"] == [post.facts.duration]
        assert f["event"] == [post.facts.event] and f["problem"] == [post.facts.problem.lower()]
        assert f["question"] == [post.facts.question.lower()]
        spec = W.SummarySpec(values=W.true_values(post.facts))
        assert gold_score(post.body, W.render_summary(spec, post.facts)) == 8.0
        news = W.make_news_article(rng, "cnn")
        spec = W.SummarySpec(values=W.true_values(news.facts))
        assert gold_score(news.body, W.render_summary(spec, news.facts)) == 8.0


def test_confidence_grows_with_margin_and_judge_prefers_higher_score():
    assert confidence_from_margin(0.0) == 1 and confidence_from_margin(10.0) == 9
    assert confidence_from_margin(1.0) < confidence_from_margin(2.5)
    assert GoldJudge().judge(POST, PERFECT, "I feel bad.") == 0
    assert GoldJudge().judge(POST, "I feel bad.", PERFECT) == 1


def test_same_seed_byte_identical_and_schema(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(a, seed=5, n_posts=300, progress=False)
    generate_world(b, seed=5, n_posts=300, progress=False)
    generate_world(c, seed=6, n_posts=300, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jsonl"))
    assert len(files) == 8  # tldr x 3, comparisons x 3, pretrain x 2
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert (a / "tldr/train.jsonl").read_bytes() != (c / "tldr/train.jsonl").read_bytes()
    row = json.loads((a / "tldr/train.jsonl").read_text().splitlines()[0])
    assert set(row) == {"id", "subreddit", "title", "post", "summary"} and not row["summary"].startswith(" ")
    comps = [json.loads(line) for line in (a / "comparisons/valid1.jsonl").read_text().splitlines()]
    news = [c for c in comps if "article" in c["info"]]
    assert news and {c["batch"] for c in news} <= {"batch0_cnndm", "cnndm0", "cnndm2"}
    for c in comps:
        assert set(c) == {"info", "summaries", "choice", "worker", "batch", "split", "extra"}
        assert c["choice"] in (0, 1) and 1 <= c["extra"]["confidence"] <= 9 and c["split"] == "valid1"
        assert len(c["summaries"]) == 2 and all(s["text"].startswith(" ") for s in c["summaries"])
    # a larger world only adds rows
    d = tmp_path / "d"
    generate_world(d, seed=5, n_posts=400, progress=False)
    assert (d / "tldr/valid.jsonl").read_text().startswith((a / "tldr/valid.jsonl").read_text())


def test_labels_are_noisy_but_informative(small_world):
    info = json.loads((small_world / "world.json").read_text())
    acc = info["gold_accuracy_validation"]
    assert 0.65 < acc["all"]["accuracy"] < 0.97
    low = [v["accuracy"] for k, v in acc.items() if k in ("confidence/1", "confidence/2")]
    high = [v["accuracy"] for k, v in acc.items() if k in ("confidence/8", "confidence/9")]
    assert min(high) > max(low)
    assert len({round(v, 3) for v in info["batch_sharpness"].values()}) > 3  # noise differs by batch


def test_world_tokenizer_like_pythia(small_world):
    from rlhf_repro.tokenization import load_tokenizer

    tok = load_tokenizer(small_world / "tokenizer")
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0 and tok.pad_token == "[PAD]"
    assert tok.pad_token_id == 1
    text = "I (24 M) and my girlfriend (23 F). héllo ✓"
    assert tok.decode(tok(text)["input_ids"]) == text
