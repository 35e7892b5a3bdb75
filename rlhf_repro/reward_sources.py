"""Rewards other than our RM, for PPO's --reward-source:

- `classifier`: any `AutoModelForSequenceClassification` (hub id or directory) scoring the decoded
  response, as in the classic sentiment-PPO examples. The score is the logit, or the softmax
  probability, of one named label; the classifier brings its own tokenizer.
- `gold`: the simulated world's gold labeler (an oracle reward model).
- `length`: minus the distance of the response's length from a target: the CartPole of RLHF, a reward
  that any correct PPO raises within minutes (the first check when PPO on a real reward does not learn).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rlhf_repro.io import InputError, from_hub


class ClassifierReward:
    def __init__(
        self,
        name_or_path: str | os.PathLike,
        label: str | None = None,
        output: str = "logit",
        text: str = "response",
        device: str | torch.device = "cpu",
        max_length: int = 512,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rlhf_repro.modeling import check_model_source, disable_dropout

        check_model_source(name_or_path)
        load = (
            (lambda cls: cls.from_pretrained(str(name_or_path)))
            if Path(name_or_path).exists()
            else (lambda cls: from_hub("reward classifier", str(name_or_path), cls.from_pretrained, str(name_or_path)))
        )
        self.model = load(AutoModelForSequenceClassification).to(device).eval().requires_grad_(False)
        disable_dropout(self.model)
        self.tokenizer = load(AutoTokenizer)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        labels = {v: int(k) for k, v in self.model.config.id2label.items()}
        if label is None:
            if self.model.config.num_labels != 1:
                raise InputError(f"the classifier has labels {sorted(labels)}; choose one with --reward-label")
            self.index = 0
        elif label not in labels:
            raise InputError(f"label {label!r} is not one of the classifier's {sorted(labels)}", name_or_path)
        else:
            self.index = labels[label]
        if output not in ("logit", "probability"):
            raise InputError(f"unknown output {output!r}; one of logit, probability")
        if text not in ("response", "query_response"):
            raise InputError(f"unknown text {text!r}; one of response, query_response")
        self.output, self.text, self.device, self.max_length = output, text, device, max_length

    @torch.no_grad()
    def __call__(self, queries: list[str], responses: list[str]) -> torch.Tensor:
        texts = responses if self.text == "response" else [q + r for q, r in zip(queries, responses)]
        texts = [t or " " for t in texts]  # an empty response (EOS first) still gets a score
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
        if self.output == "probability":
            return torch.softmax(logits, -1)[:, self.index]
        return logits[:, self.index]


def gold_scores(queries: list[str], responses: list[str]) -> list[float]:
    """The gold labeler's score of each decoded response, the post read out of the decoded query (its
    POST section). Only meaningful on simulated-world prompts."""
    from rlhf_repro.sim.evaluate import post_from_query
    from rlhf_repro.sim.labeler import gold_score

    return [gold_score(post_from_query(q), r.strip()) for q, r in zip(queries, responses)]


class GoldReward:
    """The simulated world's gold labeler as the reward (an oracle RM, as in over-optimization studies).

    score = scale x (gold score - offset), where the gold score (`rlhf_repro.sim.labeler.gold_score`:
    coverage minus contradictions, repeats, irrelevant details, excess length and an unfinished
    sentence; a perfect summary scores 8) is taken against the post read out of the decoded query. The
    offset is normally the references' mean gold score, so references average 0 as the RM's do after
    its bias normalization (detail 15), and the EOS trick's penalty sits where it sits for an RM.
    A query without ages is scored as a news article.
    """

    def __init__(self, scale: float = 1.0, offset: float = 0.0, device: str | torch.device = "cpu"):
        self.scale, self.offset, self.device = scale, offset, device

    def __call__(self, queries: list[str], responses: list[str]) -> torch.Tensor:
        scores = [(g - self.offset) * self.scale for g in gold_scores(queries, responses)]
        return torch.tensor(scores, dtype=torch.float32, device=self.device)


def length_reward(responses: torch.Tensor, pad_token_id: int, target: int) -> torch.Tensor:
    """-|response length - target| / 10 per row of right-padded, EOS-truncated responses (B, R): the
    length is the number of tokens before the first PAD, the EOS included (PPO's sequence length + 1, as
    `ppo/val/response_length` reports it)."""
    from rlhf_repro.ops import first_true_indices

    return -(first_true_indices(responses == pad_token_id).float() - target).abs() / 10.0
