"""Shared helpers: atomic I/O, input errors, seeding, run folders, checkpoints, provenance, tracking, loading."""

import json
import random

import pytest
import torch

from rlhf_repro.io import InputError, atomic_directory, atomic_write_text, looks_like_hub_id, read_jsonl
from rlhf_repro.provenance import provenance, redact_argv
from rlhf_repro.runs import MetricsWriter, RunFolder, load_checkpoint, read_metrics, run_dir, save_checkpoint
from rlhf_repro.seeding import local_seed, seed_everything
from tests.conftest import REAL_TOKENIZER

pytestmark = pytest.mark.unit


def test_atomic_write_and_directory(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    assert (tmp_path / "a.txt").read_text() == "one"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as d:
            (d / "new.txt").write_text("half")
            raise RuntimeError("crash mid-way")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]
    with atomic_directory(tmp_path / "out") as d:
        (d / "new.txt").write_text("full")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"b": 2}\n')
    assert [ln for ln, _ in read_jsonl(p)] == [1, 3]
    p.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: not valid UTF-8"):
        list(read_jsonl(p))
    p.write_bytes(b'{"a": 1}\n{"b": \n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: not valid JSON"):
        list(read_jsonl(p))
    p.write_bytes(b"[1, 2]\n")
    with pytest.raises(InputError, match="expected a JSON object"):
        list(read_jsonl(p))
    assert str(InputError("empty", "f.jsonl", 3, "post")) == "f.jsonl:3, field 'post': empty"
    with pytest.raises(InputError, match="file not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_hub_id_detection(tmp_path):
    assert looks_like_hub_id("EleutherAI/pythia-1b-deduped") and looks_like_hub_id("gpt2")
    assert not looks_like_hub_id("./x") and not looks_like_hub_id("/abs/path") and not looks_like_hub_id("a/b/c")


def test_seeding_rank_offset_and_reproducibility():
    assert local_seed(44413, 0) == 44413 and local_seed(44413, 3) == 44413 + 3 * 100003
    seed_everything(7, rank=1)
    a = (random.random(), torch.rand(3))
    seed_everything(7, rank=1)
    b = (random.random(), torch.rand(3))
    seed_everything(7, rank=0)
    c = torch.rand(3)
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and not torch.equal(a[1], c)


def test_metrics_writer_resume_drops_lines_after_checkpoint(tmp_path):
    w = MetricsWriter(tmp_path / "m.jsonl")
    for s in range(1, 6):
        w.log({"loss": float(s), "t": torch.tensor(0.5)}, step=s)
    w.close()
    w = MetricsWriter(tmp_path / "m.jsonl", resume_step=3)
    w.log({"loss": 40.0}, step=4)
    w.close()
    rows = read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == 40.0 and rows[0]["t"] == 0.5


def test_checkpoint_roundtrip_restores_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 5, model, opt, extra={"pos": 12}, config={"lr": 0.1})
    expected_next = torch.rand(2)
    w = model.weight.detach().clone()
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = load_checkpoint(tmp_path, fresh, fresh_opt, config={"lr": 0.1})
    assert state["step"] == 5 and state["extra"] == {"pos": 12}
    assert torch.equal(fresh.weight, w) and torch.equal(torch.rand(2), expected_next)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    with pytest.raises(ValueError, match=r"different config \(fields \['lr'\]\)"):
        load_checkpoint(tmp_path, fresh, config={"lr": 0.2})
    assert load_checkpoint(tmp_path / "none", fresh) is None
    # A checkpoint from before --max-grad-norm existed resumes under its old behaviour (0) only.
    assert load_checkpoint(tmp_path, fresh, config={"lr": 0.1, "max_grad_norm": 0.0})["step"] == 5
    with pytest.raises(ValueError, match=r"different config \(fields \['max_grad_norm'\]\)"):
        load_checkpoint(tmp_path, fresh, config={"lr": 0.1, "max_grad_norm": 1.0})


def test_run_folder_and_provenance_never_store_secrets(tmp_path, monkeypatch):
    from dataclasses import dataclass

    @dataclass
    class A:
        lr: float = 3e-6
        openai_api_key: str = "sk-secret-123"

    monkeypatch.setattr("sys.argv", ["x", "--openai-api-key", "sk-secret-123", "--hf_token=hf_abc", "--lr", "1"])
    path = run_dir(tmp_path, "exp", "sft", "EleutherAI/pythia-1b-deduped", 44413)
    assert path.parts[-3:] == ("sft", "EleutherAI__pythia-1b-deduped", "44413")
    run = RunFolder(path)
    w = run.start(A(), inputs={"tokenizer": str(REAL_TOKENIZER), "model": "EleutherAI/pythia-1b-deduped"})
    w.log({"loss": 1.0}, step=1)
    w.close()
    run.finish({"acc": 0.5})
    assert run.is_done()
    text = "".join(p.read_text() for p in path.iterdir() if p.is_file())
    assert "sk-secret-123" not in text and "hf_abc" not in text
    prov = json.loads((path / "provenance.json").read_text())
    assert prov["inputs"]["tokenizer"]["sha256_16"] and prov["inputs"]["model"]["hub_id"]
    assert {"sha", "dirty"} <= set(prov["git"]) and "torch" in prov["packages"]
    assert redact_argv(["--api-key", "k", "--x", "1"]) == ["--api-key", "***", "--x", "1"]
    assert "deterministic_algorithms" in provenance()["device"]


def test_wandb_offline_writes_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from rlhf_repro.tracking import NoOpTracker, make_tracker

    assert isinstance(make_tracker(False), NoOpTracker)
    t = make_tracker(
        True,
        name="t",
        group="g",
        job_type="sft",
        tags=["eos-trick-off"],
        config={"lr": 1.0, "api_key": "sk-x"},
        directory=tmp_path,
    )
    for s in range(3):
        t.log({"objective/kl": 0.1 * s}, step=s)
    t.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert b"sk-x" not in next(runs[0].glob("run-*.wandb")).read_bytes()


def test_tokenizer_loading_and_its_errors(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from rlhf_repro.tokenization import load_tokenizer, tokenizer_fingerprint

    tok = load_tokenizer(REAL_TOKENIZER)
    assert (tok.eos_token_id, tok.pad_token_id, tok.pad_token) == (0, 50277, "[PAD]")
    assert tok("TL;DR:", add_special_tokens=False)["input_ids"] == [14135, 28, 4976, 27]
    tok.save_pretrained(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    with pytest.raises(InputError, match="same id"):
        load_tokenizer(REAL_TOKENIZER, pad_token="<|endoftext|>")
    bare = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    bare.save(str(tmp_path / "noeos.json"))
    with pytest.raises(InputError, match="no EOS token"):
        load_tokenizer(tmp_path / "noeos.json")
    with pytest.raises(InputError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing" / "dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_model_shapes_and_local_loading(tmp_path):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

    from rlhf_repro.modeling import count_parameters, load_causal_lm, shape_config

    cfg = shape_config("tiny-s", tokenizer_size=2489)
    assert cfg.vocab_size == 2560 and cfg.rope_parameters["partial_rotary_factor"] == 0.25
    assert cfg.use_parallel_residual and not cfg.tie_word_embeddings
    assert shape_config("pythia-14m", 50278).vocab_size == 50304
    assert count_parameters(GPTNeoXForCausalLM(shape_config("pythia-14m", 50278))) == 14_067_712
    dropout_cfg = GPTNeoXConfig(**{**cfg.to_dict(), "hidden_dropout": 0.3, "attention_dropout": 0.3})
    GPTNeoXForCausalLM(dropout_cfg).save_pretrained(tmp_path / "m")
    model = load_causal_lm(tmp_path / "m")
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "m")).__name__ == "GPTNeoXForCausalLM"
    with pytest.raises(InputError, match="no config.json"):
        load_causal_lm(tmp_path)
    with pytest.raises(InputError, match="unknown model shape"):
        shape_config("huge", 10)


def test_the_library_imports_no_stage_script_analysis_or_benchmark():
    """Issue 20: rlhf_repro/ is the library. Only the `rlhf-repro` dispatcher (rlhf_repro/cli.py) reaches
    experiments/, analysis/ and benchmarks/, by module name when a command runs; no module imports them."""
    import ast

    from tests.conftest import REPO

    outside = ("experiments", "analysis", "benchmarks")
    found = []
    for path in sorted((REPO / "rlhf_repro").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.split(".")[0] in outside]
    assert found == []
    # The benchmarks are a package of their own, importable without a path hack.
    for path in sorted((REPO / "benchmarks").rglob("*.py")):
        assert "sys.path.insert" not in path.read_text(), path


def test_a_checkpoint_written_under_a_renamed_field_resumes(tmp_path):
    import torch

    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 3, model, config={"model_preset": "tiny-m", "lr": 1e-3})
    state = load_checkpoint(tmp_path, torch.nn.Linear(2, 2), config={"model_shape": "tiny-m", "lr": 1e-3})
    assert state["step"] == 3
    with pytest.raises(InputError, match="different config"):
        load_checkpoint(tmp_path, torch.nn.Linear(2, 2), config={"model_shape": "tiny-s", "lr": 1e-3})


def test_a_checkpoint_holding_a_removed_field_resumes_only_at_its_neutral_value(tmp_path):
    """PPO-ptx left ppo.py (issue 20): a checkpoint written with ptx_coef 0 (off) resumes; one that trained
    with it on is refused, since the code that would continue that run is gone."""
    import torch

    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "off", 3, model, config={"ptx_coef": 0.0, "lr": 1e-3})
    assert load_checkpoint(tmp_path / "off", torch.nn.Linear(2, 2), config={"lr": 1e-3})["step"] == 3
    save_checkpoint(tmp_path / "on", 3, model, config={"ptx_coef": 0.5, "lr": 1e-3})
    with pytest.raises(InputError, match=r"different config \(fields \['ptx_coef'\]\)"):
        load_checkpoint(tmp_path / "on", torch.nn.Linear(2, 2), config={"lr": 1e-3})
