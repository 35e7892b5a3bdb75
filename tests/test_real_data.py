"""The builder on real TL;DR data with the real Pythia tokenizer (../shared/data)."""

import json
import shutil

import numpy as np
import pytest
import tyro
from datasets import load_from_disk

from experiments.build_dataset import Args, main
from rlhf_repro.io import InputError
from rlhf_repro.tldr import TLDR_FORMAT
from tests.conftest import REAL_TOKENIZER

pytestmark = pytest.mark.unit
TLDR_TOKENS = [14135, 28, 4976, 27]  # "TL;DR:" in the GPT-NeoX-20B tokenizer
PAD, EOS = 50277, 0


@pytest.fixture(scope="module")
def real_build(shared_data, tmp_path_factory):
    src = tmp_path_factory.mktemp("real_src")
    mini = shared_data / "tldr-sft-mini"
    shutil.copy(mini / "train.jsonl", src / "train.jsonl")
    shutil.copy(mini / "test.jsonl", src / "test.jsonl")
    shutil.copy(shared_data / "tldr-oai-ppo1.3b-valid" / "valid_first1945.jsonl", src / "valid.jsonl")
    out = tmp_path_factory.mktemp("real_out") / "built"
    args = tyro.cli(
        Args,
        args=[
            "--tldr-source",
            str(src),
            "--comparisons-source",
            str(shared_data / "tldr-comparisons-mini"),
            "--tokenizer",
            str(REAL_TOKENIZER),
            "--output-dir",
            str(out),
            "--no-check-length-correctness",
            "--no-progress",
        ],
    )
    summary = main(args)
    posts = [json.loads(line) for line in open(src / "valid.jsonl")]
    return out, summary, posts


def test_every_validation_query_is_512_left_padded_and_ends_in_tldr(real_build):
    out, _, posts = real_build
    ds = load_from_disk(str(out / "sft"))["validation"]
    assert len(ds) == 1945
    q = np.asarray(ds["query_token"])
    assert q.shape == (1945, 512)
    assert (q[:, -4:] == TLDR_TOKENS).all()
    for row, lens in zip(q, ds["query_token_len"]):
        assert (row[: 512 - lens] == PAD).all() and (row[512 - lens :] != PAD).all()
    assert all(t.endswith("TL;DR:") for t in ds["query"])


def test_long_posts_are_cut_at_paragraph_boundaries(real_build):
    out, summary, posts = real_build
    from rlhf_repro.tokenization import load_tokenizer

    tok = load_tokenizer(REAL_TOKENIZER)
    ds = load_from_disk(str(out / "sft"))["validation"]
    cut = 0
    for post, query in zip(posts, ds["query"]):
        full = TLDR_FORMAT.format(**post)
        if query == full:
            continue
        cut += 1
        kept = query[query.index("POST: ") + len("POST: ") : -len("\n\nTL;DR:")]
        assert post["post"].startswith(kept)
        if "\n" in post["post"]:
            # cut just before a newline: a whole number of paragraphs was dropped
            assert post["post"][len(kept)] == "\n"
        # and the cut was needed: one more paragraph would not fit
        assert len(tok(full, add_special_tokens=False)["input_ids"]) > 512
    assert cut == summary["sft"]["validation"]["truncated_queries"] > 0


def test_decoding_the_query_gives_back_the_formatted_text(real_build):
    out, _, posts = real_build
    from rlhf_repro.tokenization import load_tokenizer

    tok = load_tokenizer(REAL_TOKENIZER)
    ds = load_from_disk(str(out / "sft"))["validation"]
    for i in range(0, 1945, 97):
        text = tok.decode(ds[i]["query_token"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert text.lstrip() == ds[i]["query"]
        assert ds[i]["query"].startswith(
            f"SUBREDDIT: r/{posts[i]['subreddit']}\n\nTITLE: {posts[i]['title']}\n\nPOST: "
        )


def test_reference_tokens_end_in_eos_and_pad_with_pad_never_eos(real_build):
    out, _, posts = real_build
    ds = load_from_disk(str(out / "sft"))["validation"]
    ref = np.asarray(ds["reference_response_token"])
    assert ref.shape[1] == 53
    for row, n, post, text in zip(ref, ds["reference_response_token_len"], posts, ds["reference_response"]):
        assert text == f" {post['summary']}<|endoftext|>"
        if n <= 53:
            assert row[n - 1] == EOS and (row[n:] == PAD).all() and (row[: n - 1] != EOS).all()
    qr = np.asarray(ds["query_reference_response_token"])
    label = np.asarray(ds["query_reference_response_token_response_label"])
    for i in range(0, 1945, 50):
        n, nq = ds[i]["query_reference_response_token_len"], ds[i]["query_token_len"]
        assert qr[i, n - 1] == EOS and (qr[i, n:] == PAD).all()
        assert (label[i, :nq] == PAD).all() and (label[i, nq:] == qr[i, nq:]).all()


def test_preference_pairs_from_prompt_chosen_rejected_form(real_build, shared_data):
    out, _, _ = real_build
    dsd = load_from_disk(str(out / "preference"))
    assert {k: len(v) for k, v in dsd.items()} == {"train": 50, "validation": 150, "validation_cnndm": 0}
    row = dsd["train"][0]
    src = json.loads(open(shared_data / "tldr-comparisons-mini" / "train.jsonl").readline())
    assert row["chosen"] == src["chosen_summary"] + "<|endoftext|>"
    assert row["rejected"] == src["rejected_summary"] + "<|endoftext|>"
    assert row["batch"] is None and row["extra"]["confidence"] is None and row["policies"] is None
    assert row["split"] == "train" and set(dsd["validation"]["split"]) == {"valid1", "valid2", "test"}
    for r in dsd["validation"].select(range(0, 150, 7)):
        assert r["chosen"].startswith(" ") and r["rejected"].startswith(" ")
        n = r["chosen_token_len"]
        assert len(r["chosen_token"]) == 169 and r["chosen_token"][n - 1] == EOS
        assert len(r["query_chosen_token"]) == 638
        assert r["query_chosen"] == r["query"].strip() + r["chosen"]


def test_length_check_on_a_subset_names_the_budget(shared_data, tmp_path):
    args = tyro.cli(
        Args,
        args=[
            "--tldr-source",
            str(shared_data / "tldr-sft-mini"),
            "--tokenizer",
            str(REAL_TOKENIZER),
            "--output-dir",
            str(tmp_path / "o"),
            "--no-progress",
        ],
    )
    with pytest.raises(InputError, match="max_sft_response_length is 53"):
        main(args)
    assert not (tmp_path / "o").exists()


def test_saved_dataset_source_takes_the_hub_code_path(shared_data, tmp_path):
    # A DatasetDict saved with save_to_disk goes through the same row reader as a hub dataset.
    from datasets import load_dataset

    files = {s: str(shared_data / "tldr-comparisons-mini" / f"{s}.jsonl") for s in ("train", "valid1", "valid2")}
    load_dataset("json", data_files=files).save_to_disk(str(tmp_path / "saved"))
    args = tyro.cli(
        Args,
        args=[
            "--comparisons-source",
            str(tmp_path / "saved"),
            "--tokenizer",
            str(REAL_TOKENIZER),
            "--output-dir",
            str(tmp_path / "o"),
            "--no-check-length-correctness",
            "--no-progress",
        ],
    )
    summary = main(args)
    assert summary["preference"]["train"]["rows"] == 50 and summary["preference"]["validation"]["rows"] == 100
    saved = load_from_disk(str(tmp_path / "o" / "preference"))["validation"]
    assert set(saved["split"]) == {"valid1", "valid2"} and saved[0]["chosen"].endswith("<|endoftext|>")
