"""Does the reward model rank a policy's own samples the way the gold labeler does?

PPO can only improve what its reward sees. For each of N validation posts this samples K responses
from the policy as a PPO rollout does (T = 0.7, a fixed number of tokens, truncated after the first
EOS), scores each with the RM (read at its EOS, detail 12) and with the gold labeler, and reports:

- `rm_gold_agreement_on_policy_samples`: over the pairs of samples of the same post whose gold scores
  differ (gold ties left out), how often the RM orders the pair as the gold labeler does (chance 0.5);
- the mean gold score of the samples, of the RM's best of K and of the gold-best of K (the ceiling a
  perfect reward could select).

`rlhf-repro sim rm-agreement` writes it as JSON (the quickstart puts it in the RM's run folder, and its
claims summary carries the agreement).
"""

from __future__ import annotations

import os
from pathlib import Path


def pair_agreement(gold, reward) -> tuple[int, int]:
    """(pairs the reward orders as gold does, pairs gold does not tie) over every pair of columns of the
    (posts, K) tensors, within each row. A reward tie on a gold-untied pair counts as a disagreement."""
    agree = total = 0
    k = gold.size(1)
    for a in range(k):
        for b in range(a + 1, k):
            untied = gold[:, a] != gold[:, b]
            agree += int(((reward[:, a] - reward[:, b]).sign() == (gold[:, a] - gold[:, b]).sign())[untied].sum())
            total += int(untied.sum())
    return agree, total


def rm_policy_agreement(
    policy: str | os.PathLike,
    reward_model: str | os.PathLike,
    query_dataset: str | os.PathLike,
    world: str | os.PathLike,
    posts: int = 200,
    samples: int = 4,
    temperature: float = 0.7,
    response_length: int = 53,
    seed: int = 0,
    batch_posts: int = 16,
) -> dict:
    import torch

    from rlhf_repro.data import load_processed, token_batch
    from rlhf_repro.generation import generate
    from rlhf_repro.modeling import load_causal_lm
    from rlhf_repro.ops import truncate_response
    from rlhf_repro.reward_model import get_reward, load_reward_model
    from rlhf_repro.sim.evaluate import world_posts
    from rlhf_repro.sim.labeler import gold_score
    from rlhf_repro.tokenization import load_tokenizer

    tokenizer = load_tokenizer(policy)
    pad, eos, k = tokenizer.pad_token_id, tokenizer.eos_token_id, samples
    model = load_causal_lm(policy).eval()
    rm = load_reward_model(reward_model).eval()
    data = load_processed(Path(query_dataset), {"validation": ("query_token",)})["validation"]
    texts_of = world_posts(world)
    n = min(posts, len(data))
    generator = torch.Generator().manual_seed(seed)
    gold, reward = [], []
    with torch.no_grad():
        for start in range(0, n, batch_posts):
            rows = list(range(start, min(start + batch_posts, n)))
            (queries,) = token_batch(data, rows, "query_token")
            queries = queries.repeat_interleave(k, 0)
            responses, _ = generate(model, queries, pad, response_length, temperature, generator=generator)
            responses = truncate_response(responses, eos, pad)
            query_responses = torch.cat((queries, responses), 1)
            reward.append(get_reward(rm, query_responses, pad, queries.size(1))[1].view(-1, k))
            decoded = tokenizer.batch_decode(responses, skip_special_tokens=True)
            ids = data.select(rows)["id"]
            scores = [gold_score(texts_of[ids[j // k]], t.strip()) for j, t in enumerate(decoded)]
            gold.append(torch.tensor(scores).view(-1, k))
    g, r = torch.cat(gold), torch.cat(reward).float()
    agree, total = pair_agreement(g, r)
    return {
        "rm_gold_agreement_on_policy_samples": round(agree / max(1, total), 4),
        "untied_pairs": total,
        "pairs": len(g) * k * (k - 1) // 2,
        "posts": len(g),
        "samples_per_post": k,
        "temperature": temperature,
        "response_length": response_length,
        "gold_mean": round(float(g.mean()), 4),
        "gold_of_rm_best": round(float(g.gather(1, r.argmax(1, keepdim=True)).mean()), 4),
        "gold_of_gold_best": round(float(g.max(1).values.mean()), 4),
        "policy": str(policy),
        "reward_model": str(reward_model),
    }
