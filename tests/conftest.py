import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_TOKENIZER = SHARED_DATA / "tokenizers" / "gpt-neox-20b" / "20B_tokenizer.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"tests read real data from {SHARED_DATA} (the shared/ folder beside the repo)"
    return SHARED_DATA


class _ForkServer:
    """Client of tests/forkserver.py: a process that has imported torch, transformers and datasets once and
    forks a child per command (see its docstring for what it can and cannot stand in for)."""

    def __init__(self):
        import queue
        import threading

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("forkserver.py"))],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._next(120)  # {"ready": pid}

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _next(self, timeout):
        import json

        line = self.lines.get(timeout=timeout)
        if line is None:
            raise RuntimeError("the test fork server exited")
        return json.loads(line)

    def run(self, args, cwd, env, timeout):
        import json
        import signal
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": args[1:], "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self._next(60)["pid"]
            try:
                rc = self._next(timeout)["rc"]
            except Exception:
                os.killpg(pid, signal.SIGKILL)
                self._next(60)
                raise subprocess.TimeoutExpired(args, timeout) from None
            text = {p: p.read_text(errors="replace") if p.exists() else "" for p in (out, err)}
            return subprocess.CompletedProcess(args, rc, text[out], text[err])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


_FORK_SERVER: list = []


def _forkable(args: list[str], env: dict | None) -> bool:
    """A command of ours run by this interpreter, whose extra environment is read at run time only."""
    if os.environ.get("RLHF_REPRO_TEST_FORK", "1") == "0" or len(args) < 2 or args[0] != sys.executable:
        return False
    if not (args[1] == "-m" or args[1].endswith(".py")):
        return False
    return all(k.startswith("RLHF_REPRO_") for k in (env or {}))


def run_cmd(args: list[str], cwd: Path = REPO, timeout: int = 600, env: dict | None = None):
    """Run a command of the suite in its own process, the way a user would. Commands of this interpreter
    are forked from a server that has done their imports (tests/forkserver.py); others start afresh."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if _forkable(args, env):
        if not _FORK_SERVER:
            import atexit

            _FORK_SERVER.append(_ForkServer())
            atexit.register(_FORK_SERVER[0].close)
        return _FORK_SERVER[0].run(args, cwd, full_env, timeout)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def run_fresh(args: list[str], cwd: Path = REPO, timeout: int = 600, env: dict | None = None):
    """`run_cmd` in a fresh interpreter always: for what happens at import time."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def cli(*args: str, **kw):
    return run_cmd([sys.executable, "-m", "rlhf_repro.cli", *args], **kw)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """A 600-post simulated world with its tokenizer (generated once per test session)."""
    from rlhf_repro.io import atomic_directory
    from rlhf_repro.sim.generate import generate_world
    from rlhf_repro.sim.tokenizer import train_world_tokenizer, world_texts

    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=3, n_posts=600, progress=False)
    tok = train_world_tokenizer(world_texts(out), vocab_size=1024)
    with atomic_directory(out / "tokenizer") as tmp:
        tok.save_pretrained(str(tmp))
    return out


@pytest.fixture(scope="session")
def small_datasets(small_world, tmp_path_factory) -> Path:
    import tyro

    from experiments.build_dataset import Args, main
    from rlhf_repro.presets import TINY_DATASET_FLAGS

    out = tmp_path_factory.mktemp("data") / "built"
    args = tyro.cli(
        Args,
        args=[
            "--tldr-source",
            str(small_world / "tldr"),
            "--comparisons-source",
            str(small_world / "comparisons"),
            "--tokenizer",
            str(small_world / "tokenizer"),
            "--output-dir",
            str(out),
            "--no-progress",
            *TINY_DATASET_FLAGS,
        ],
    )
    main(args)
    return out


@pytest.fixture(scope="session")
def tiny_base_model(small_world, tmp_path_factory) -> Path:
    """A randomly initialized tiny-s GPT-NeoX with the small world's tokenizer, saved like pretrain.py's model/."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from rlhf_repro.modeling import shape_config
    from rlhf_repro.tokenization import load_tokenizer

    tok = load_tokenizer(small_world / "tokenizer")
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(shape_config("tiny-s", len(tok), eos_token_id=tok.eos_token_id, max_positions=512))
    out = tmp_path_factory.mktemp("base") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_base_model, tmp_path_factory) -> Path:
    """An untrained reward model (tiny_base_model's body + a fresh head), saved like reward.py's model/."""
    import torch

    from rlhf_repro.reward_model import ScalarModel, load_backbone
    from rlhf_repro.tokenization import load_tokenizer

    torch.manual_seed(1)
    rm = ScalarModel.from_sft(load_backbone(tiny_base_model), source_model=str(tiny_base_model))
    out = tmp_path_factory.mktemp("rm") / "model"
    rm.save_pretrained(out)
    load_tokenizer(tiny_base_model).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def eos_prone_model(tiny_base_model, tmp_path_factory) -> Path:
    """tiny_base_model rewired so that every position samples EOS with probability about 0.1 at PPO's T=0.7,
    whatever the context: of 12-token responses about 3 in 4 contain an EOS and 1 in 4 do not, which the
    EOS switches need. (At T=0.01, EOS is the argmax everywhere.)"""
    import torch
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(tiny_base_model)
    with torch.no_grad():
        ln = model.gpt_neox.final_layer_norm
        ln.weight.zero_()  # the final hidden state is the LayerNorm bias at every position
        b = torch.randn(ln.bias.shape, generator=torch.Generator().manual_seed(0))
        ln.bias.copy_(b)
        head = model.get_output_embeddings().weight
        head.mul_(0.01)
        vocab = head.size(0)
        eos_logit = 0.7 * torch.log(torch.tensor(0.1 / 0.9 * vocab))  # other logits are about 0
        head[model.config.eos_token_id] = b / b.dot(b) * eos_logit
    out = tmp_path_factory.mktemp("eosprone") / "model"
    model.save_pretrained(out)
    (out / "tokenizer.json").write_bytes((tiny_base_model / "tokenizer.json").read_bytes())
    (out / "tokenizer_config.json").write_bytes((tiny_base_model / "tokenizer_config.json").read_bytes())
    return out


@pytest.fixture(scope="session")
def tiny_classifier(tiny_base_model, tmp_path_factory) -> Path:
    """A random 2-label GPT-NeoX sequence classifier (NEGATIVE / POSITIVE) with the world tokenizer."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    from rlhf_repro.tokenization import load_tokenizer

    base = GPTNeoXConfig.from_pretrained(tiny_base_model)
    config = GPTNeoXConfig(
        **{k: v for k, v in base.to_dict().items() if k not in ("id2label", "label2id", "architectures")},
        num_labels=2,
    )
    config.id2label, config.label2id = {0: "NEGATIVE", 1: "POSITIVE"}, {"NEGATIVE": 0, "POSITIVE": 1}
    config.pad_token_id = 1
    torch.manual_seed(2)
    out = tmp_path_factory.mktemp("classifier") / "model"
    GPTNeoXForSequenceClassification(config).save_pretrained(out)
    load_tokenizer(tiny_base_model).save_pretrained(out)
    return out
