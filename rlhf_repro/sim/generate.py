"""Write a simulated TL;DR world to disk in the real datasets' file formats.

Layout of `--out DIR`:
  tldr/{train,valid,test}.jsonl          OpenAI `tldr_3_filtered` rows: id, subreddit, title, post, summary
  comparisons/{train,valid1,valid2}.jsonl OpenAI `comparisons` rows: info, summaries[{text, policy, note}],
                                          choice, worker, batch, split, extra.confidence; valid1/valid2
                                          also hold the news (CNN/DM) rows, batches batch0_cnndm/cnndm0/cnndm2
  tokenizer/                              byte-level BPE of the world in HF form (`<|endoftext|>`=0, `[PAD]`)
  world.json                              seed, sizes, labeler settings and the gold labeler's accuracy

Every post, summary and comparison is drawn from an RNG seeded by (seed, split, index), so the same
seed writes byte-identical files and a larger --n-posts only adds rows.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from rlhf_repro.io import atomic_write_text
from rlhf_repro.sim import world as W
from rlhf_repro.sim.labeler import gold_score, prefer, preference_probability

# Bump when the generator writes different files for the same seed: the shipped base models were
# pretrained on one version's corpus and tokenizer (rlhf_repro/sim/base_models/, checked by a test).
GENERATOR_VERSION = 2
SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
TRAIN_BATCHES = tuple(f"batch{i}" for i in range(3, 11))
VALID_BATCHES = tuple(f"batch{i}" for i in range(11, 15))
CNNDM_BATCHES = ("batch0_cnndm", "cnndm0", "cnndm2")

# How each writer damages a summary: probabilities of a filler opener, of leaving out the closing
# question, of dropping 1-2 other facts, of stating 1-2 facts wrongly, of a vague event (and problem),
# of copying 1-2 irrelevant sentences in, of repeating a span and of being cut off.
#
# The human references: usually good, often opening with a filler ("So basically, ...") and often
# leaving out the closing question, sometimes missing a fact, vague, or padded with an irrelevant
# detail. A near-greedy SFT policy imitates their most common choices (opener, no question), which the
# gold labeler scores below a complete, unpadded summary: that is what RLHF can improve, as PPO beats
# the human references in the paper.
REFERENCE_MIX = dict(opener=0.6, no_question=0.55, drop=0.08, vague=0.05, extras=0.07)
# Policies whose samples are compared, with how they write. Names follow OpenAI's (sup = supervised
# baselines, ppo = RL policies, ref = the human reference). The supervised ones write like an SFT
# policy does (the references' habits plus its own errors), so the RM learns from pairs like the
# ones PPO shows it.
POLICIES = {
    "ref": dict(weight=3),
    "sup1": dict(weight=2, opener=0.6, no_question=0.6, wrong=0.3, drop=0.4, truncate=0.2, repeat=0.25, vague=0.3),
    "sup2": dict(weight=2, opener=0.6, no_question=0.55, wrong=0.2, drop=0.3, truncate=0.1, repeat=0.1, vague=0.2),
    "sup4": dict(weight=3, opener=0.55, no_question=0.5, wrong=0.1, drop=0.2, vague=0.1, extras=0.1),
    "sup4_ppo_rm3_kl10": dict(weight=3, opener=0.1, no_question=0.1, wrong=0.05, drop=0.05, extras=0.45, repeat=0.1),
    "pretrain_lead": dict(weight=1, lead=True),
    "title": dict(weight=1, title=True),
}
# The summaries in the base models' pretraining documents: written by many people, factually right,
# of every style (the web's TL;DRs, not the SFT data).
PRETRAIN_MIX = dict(opener=0.4, no_question=0.4, drop=0.2, vague=0.1, extras=0.15)


def reference_score_distribution(scores: list[float]) -> dict:
    """Mean, share of perfect (8 of 8) references, quantiles and a histogram by score bins of 1."""
    import numpy as np

    a = np.asarray(scores, dtype=float)
    edges = np.arange(np.floor(min(a.min(), 0.0)), 9.0, 1.0)
    counts, _ = np.histogram(a, bins=np.append(edges, 8.0 + 1e-9))
    return dict(
        n=int(a.size),
        mean=round(float(a.mean()), 4),
        mean_fraction_of_max=round(float(a.mean()) / 8.0, 4),
        perfect_share=round(float((a >= 8.0).mean()), 4),
        quantiles={q: round(float(np.quantile(a, float(q))), 3) for q in ("0.1", "0.25", "0.5", "0.75", "0.9")},
        histogram={f"[{lo:g}, {lo + 1:g})" if lo < 7 else "[7, 8]": int(c) for lo, c in zip(edges, counts)},
    )


def _rng(seed: int, *key) -> random.Random:
    return random.Random("/".join(str(k) for k in (seed,) + key))


def _sample_spec(
    post: W.Post,
    rng: random.Random,
    opener=0.0,
    no_question=0.0,
    drop=0.0,
    wrong=0.0,
    vague=0.0,
    extras=0.0,
    repeat=0.0,
    truncate=0.0,
    **_,
) -> W.SummarySpec:
    values = W.true_values(post.facts)
    tldr = isinstance(post.facts, W.TldrFacts)
    spec = W.SummarySpec(values=dict(values), template=rng.randint(0, 1))
    if tldr and rng.random() < opener:
        spec.opener = rng.choice(W.V.FILLER_OPENERS)
    if tldr and rng.random() < no_question:
        spec.values["question"] = None
    keys = [k for k in values if k != "question"]
    if rng.random() < drop:
        for key in rng.sample(keys, rng.randint(1, 2)):
            spec.values[key] = None
    if rng.random() < wrong:
        for key in rng.sample(keys, rng.randint(1, 2)):
            if spec.values[key] is not None:
                spec.values[key] = W.wrong_value(key, values[key], rng, post.facts)
    if rng.random() < vague:
        spec.vague.add("event" if tldr else "action")
        if rng.random() < 0.5 and tldr:
            spec.vague.add("problem")
    if post.distractors and rng.random() < extras:
        spec.extras = rng.sample(post.distractors, min(len(post.distractors), rng.randint(1, 2)))
    spec.repeat = rng.random() < repeat
    if rng.random() < truncate:
        spec.truncate = rng.uniform(0.3, 0.75)
    return spec


def reference_summary(post: W.Post, rng: random.Random, mix: dict | None = None) -> str:
    spec = _sample_spec(post, rng, **(REFERENCE_MIX if mix is None else mix))
    return W.render_summary(spec, post.facts)


def policy_summary(policy: str, post: W.Post, reference: str, rng: random.Random) -> str:
    cfg = POLICIES[policy]
    if policy == "ref":
        return reference
    if cfg.get("lead"):
        words = post.body.split()
        return " ".join(words[: rng.randint(15, 35)])
    if cfg.get("title"):
        return post.title
    return W.render_summary(_sample_spec(post, rng, **cfg), post.facts)


def make_posts(seed: int, split: str, n: int, distractor_mean: float, mix: dict | None = None) -> list[dict]:
    """Posts of one split with their summaries: the references (REFERENCE_MIX) or, for the `pretrain`
    corpus, summaries of PRETRAIN_MIX. A post depends only on (seed, split, index), never on the mix."""
    rows = []
    for i in range(n):
        rng = _rng(seed, "tldr", split, i)
        post = W.make_tldr_post(rng, distractor_mean)
        rows.append(
            dict(
                id=f"t3_sim{ {'pretrain-train': 'pt', 'pretrain-valid': 'pv'}.get(split, split[:2]) }{i:06d}",
                subreddit=rng.choice(W.V.SUBREDDITS[post.facts.kind]),
                title=post.title,
                post=post.body,
                summary=reference_summary(post, rng, mix),
                _post=post,
            )
        )
    return rows


def _pick_policies(rng: random.Random) -> tuple[str, str]:
    names = list(POLICIES)
    weights = [POLICIES[p]["weight"] for p in names]
    a = rng.choices(names, weights)[0]
    b = a
    while b == a:
        b = rng.choices(names, weights)[0]
    return a, b


def _note(score_chosen: float, score_rejected: float, rng: random.Random) -> str | None:
    if rng.random() > 0.15:
        return None
    if score_chosen - score_rejected > 3:
        return "the other one misses or gets wrong the main point"
    return "both are close"


def make_comparison(
    row_post: W.Post,
    info: dict,
    reference: str,
    split: str,
    batch: str,
    sharpness: float,
    workers: list[str],
    rng: random.Random,
) -> dict:
    a, b = _pick_policies(rng)
    text_a = policy_summary(a, row_post, reference, rng)
    text_b = policy_summary(b, row_post, reference, rng)
    body = info.get("post") or info.get("article")
    score_a, score_b = gold_score(body, text_a), gold_score(body, text_b)
    choice, confidence = prefer(score_a, score_b, sharpness, rng)
    chosen, rejected = (score_a, score_b) if choice == 0 else (score_b, score_a)
    note = _note(chosen, rejected, rng)
    return dict(
        info=info,
        # OpenAI's comparison texts start with a space (detail 3): the builder only appends EOS.
        summaries=[
            dict(text=" " + text_a, policy=a, note=note if choice == 0 else None),
            dict(text=" " + text_b, policy=b, note=note if choice == 1 else None),
        ],
        choice=choice,
        worker=rng.choice(workers),
        batch=batch,
        split=split,
        extra=dict(confidence=confidence),
    )


def batch_sharpness(seed: int) -> dict[str, float]:
    """Labeler sharpness per batch: labeler noise differs by batch, so accuracy differs by batch."""
    rng = _rng(seed, "batches")
    batches = TRAIN_BATCHES + VALID_BATCHES + CNNDM_BATCHES
    return {b: round(rng.uniform(0.35, 1.2), 3) for b in batches}


def gold_accuracy(comparisons: list[dict], sharpness: dict[str, float]) -> dict:
    """How often the noiseless gold judge agrees with the drawn labels (ties count half), overall and
    by batch and confidence, next to the expected ceiling E[max(p, 1-p)]."""
    by = defaultdict(lambda: [0.0, 0])
    expected = 0.0
    for c in comparisons:
        body = c["info"].get("post") or c["info"].get("article")
        s0, s1 = (gold_score(body, s["text"].lstrip()) for s in c["summaries"])
        hit = 0.5 if s0 == s1 else float((0 if s0 > s1 else 1) == c["choice"])
        p = preference_probability(s0, s1, sharpness[c["batch"]])
        expected += max(p, 1 - p)
        for key in ("all", f"batch/{c['batch']}", f"confidence/{c['extra']['confidence']}"):
            by[key][0] += hit
            by[key][1] += 1
    out = {k: dict(accuracy=round(v[0] / v[1], 4), n=v[1]) for k, v in sorted(by.items())}
    out["expected_ceiling"] = round(expected / max(1, len(comparisons)), 4)
    return out


def _dump(rows: list[dict], path: Path) -> None:
    lines = [json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def generate_world(
    out: Path,
    seed: int = 0,
    n_posts: int = 20000,
    n_news: int | None = None,
    comparisons_per_post: float = 1.0,
    distractor_mean: float = 3.0,
    n_pretrain: int | None = None,
    progress: bool = True,
) -> dict:
    """Generate the world into `out`; returns the contents of world.json."""
    from tqdm.auto import tqdm

    out = Path(out)
    sizes = {s: int(round(n_posts * f)) for s, f in SPLIT_FRACTIONS.items()}
    sizes["train"] = n_posts - sizes["valid"] - sizes["test"]
    n_news = max(3, n_posts // 20) if n_news is None else n_news
    sharpness = batch_sharpness(seed)
    workers = [f"sim_worker_{i:02d}" for i in range(24)]

    posts = {}
    for split, n in tqdm(sizes.items(), desc="posts", disable=not progress):
        posts[split] = make_posts(seed, split, n, distractor_mean)
        _dump(posts[split], out / "tldr" / f"{split}.jsonl")
    # The base models' pretraining corpus: other posts of the same world, each with a summary of
    # PRETRAIN_MIX (pretrain.py turns them into "post ... In short: summary" documents).
    n_pretrain = 2 * n_posts if n_pretrain is None else n_pretrain
    for split, n in (("train", n_pretrain), ("valid", max(1, n_pretrain // 50))):
        docs = make_posts(seed, f"pretrain-{split}", n, distractor_mean, PRETRAIN_MIX)
        _dump(docs, out / "pretrain" / f"{split}.jsonl")

    comparisons = {"train": [], "valid1": [], "valid2": []}
    sources = [("train", "train", TRAIN_BATCHES), ("valid", "valid", VALID_BATCHES)]
    for post_split, tag, batches in sources:
        for i, row in enumerate(tqdm(posts[post_split], desc=f"comparisons/{tag}", disable=not progress)):
            rng = _rng(seed, "cmp", tag, i)
            k = int(comparisons_per_post) + (rng.random() < comparisons_per_post % 1)
            info = dict(id=row["id"], post=row["post"], title=row["title"], subreddit=row["subreddit"])
            for _ in range(k):
                split = "train" if tag == "train" else rng.choice(("valid1", "valid2"))
                batch = rng.choice(batches)
                comparisons[split].append(
                    make_comparison(row["_post"], info, row["summary"], split, batch, sharpness[batch], workers, rng)
                )
    for i in range(n_news):
        rng = _rng(seed, "news", i)
        site = rng.choice(W.V.NEWS_SITES)
        article = W.make_news_article(rng, site, distractor_mean)
        reference = reference_summary(article, rng)
        info = dict(id=f"{seed:x}{i:08x}", article=article.body, site=site, title=article.title)
        split, batch = rng.choice(("valid1", "valid2")), rng.choice(CNNDM_BATCHES)
        comparisons[split].append(
            make_comparison(article, info, reference, split, batch, sharpness[batch], workers, rng)
        )
    for split, rows in comparisons.items():
        _dump(rows, out / "comparisons" / f"{split}.jsonl")

    valid = comparisons["valid1"] + comparisons["valid2"]
    tldr_valid = [c for c in valid if c["batch"] not in CNNDM_BATCHES]
    news_valid = [c for c in valid if c["batch"] in CNNDM_BATCHES]
    ref_scores = [gold_score(r["post"], r["summary"]) for r in posts["train"] + posts["valid"]]
    info = dict(
        seed=seed,
        n_posts=n_posts,
        sizes={f"tldr/{k}": v for k, v in sizes.items()} | {f"comparisons/{k}": len(v) for k, v in comparisons.items()},
        n_news=n_news,
        comparisons_per_post=comparisons_per_post,
        distractor_mean=distractor_mean,
        batch_sharpness=sharpness,
        generator_version=GENERATOR_VERSION,
        n_pretrain=n_pretrain,
        reference_gold_scores=reference_score_distribution(ref_scores),
        gold_accuracy_validation=gold_accuracy(tldr_valid, sharpness),
        gold_accuracy_validation_cnndm=gold_accuracy(news_valid, sharpness),
    )
    atomic_write_text(out / "world.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info
