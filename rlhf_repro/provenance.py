"""Where a result came from: code version, packages, device, command line and input fingerprints."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "accelerate",
    "wandb",
    "tyro",
    "numpy",
    "rouge-score",
    "openai",
    "deepspeed",
    "trl",
)
# Secret names, matched on a name's last word (words split at "_", "-", "." and camelCase), because the
# last word says what the value is: `openai_api_key` is a key, `api_key_env` names an environment
# variable. A substring match ("TOKEN" anywhere) also masked `tokenizer`, `pad_token` and `truncate_token`,
# hiding the settings a reader of config.json needs.
SECRET_LAST_WORDS = frozenset(
    {"key", "apikey", "secret", "password", "passwd", "passphrase", "credential", "credentials"}
    | {"apitoken", "authtoken", "accesstoken", "hftoken"}
)
# "token" is a secret only alone or after a word that makes it a credential (hf_token, WANDB_TOKEN,
# auth/access/api/bearer/session token); after anything else it is a vocabulary token (pad_token).
SECRET_TOKEN_QUALIFIERS = frozenset(
    {"hf", "hub", "huggingface", "wandb", "openai", "github", "gh", "auth", "access", "api", "bearer", "session"}
    | {"refresh", "oauth", "secret", "private", "personal", "bot", "id"}
)


def name_words(name: str) -> list[str]:
    """Lower-case words of an identifier, flag or environment variable: "--hfToken" -> ["hf", "token"],
    "HFToken" -> ["hf", "token"]."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name.lstrip("-"))
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)  # an acronym before a word: HF|Token
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret_name(name: str) -> bool:
    """True for names whose value is a credential: api_key, *_key, secret, password, token, hf_token,
    wandb/auth/access token; False for tokenizer, pad_token, truncate_token, max_tokens, api_key_env."""
    words = name_words(name)
    if not words:
        return False
    last = words[-1]
    if last in SECRET_LAST_WORDS:
        return True
    if last == "token":
        return len(words) == 1 or words[-2] in SECRET_TOKEN_QUALIFIERS
    return False


REPO_ROOT = Path(__file__).resolve().parent.parent


def git_state(root: Path = REPO_ROOT) -> dict:
    """{"sha": commit or None, "dirty": bool or None} of the checkout the code runs from."""

    def run(*cmd):
        return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        sha = run("rev-parse", "HEAD")
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        status = run("status", "--porcelain", "--untracked-files=no")
        return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def package_versions(names=PACKAGES) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    except ImportError:
        pass
    return info


def fingerprint_path(path: str | os.PathLike, max_files: int = 2000) -> str | None:
    """A content hash of a file or directory tree (sha256 over relative names and bytes)."""
    p = Path(path)
    if not p.exists():
        return None
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    for f in files[:max_files]:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def input_record(name_or_path: str | None, revision: str | None = None) -> dict | None:
    """Identify an input: a local path by content hash, a hub id by its revision."""
    if name_or_path is None:
        return None
    p = Path(name_or_path)
    if p.exists():
        return {"path": str(p.resolve()), "sha256_16": fingerprint_path(p)}
    return {"hub_id": str(name_or_path), "revision": revision or "main"}


def redact_argv(argv: list[str]) -> list[str]:
    """argv with the value of every flag named as a secret (`is_secret_name`: --api-key, --hf-token, ...)
    replaced by ***, as `--flag VALUE` or `--flag=VALUE`: secrets never reach files."""
    out, hide_next = [], False
    for a in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        flag = a.split("=", 1)[0]
        if a.startswith("--") and is_secret_name(flag):
            if "=" in a:
                out.append(a.split("=", 1)[0] + "=***")
            else:
                out.append(a)
                hide_next = True
        else:
            out.append(a)
    return out


def provenance(inputs: dict[str, str | None] | None = None, extra: dict | None = None) -> dict:
    """The provenance record a run folder stores as provenance.json."""
    record = {
        "git": git_state(),
        "packages": package_versions(),
        "device": device_info(),
        "argv": redact_argv(sys.argv),
        "inputs": {k: input_record(v) for k, v in (inputs or {}).items()},
    }
    if extra:
        record.update(extra)
    return record
