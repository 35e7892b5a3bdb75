"""The experiment registry (rlhf_repro/experiments.toml): presets, named experiments and ablations, read
and checked, and the questions the plan asks of it (which experiment owns a stage's run folder, which
flags a stage gets)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomllib

REGISTRY = Path(__file__).resolve().parent.parent / "experiments.toml"
STAGES = ("world", "datasets", "pretrain", "sft", "reward", "ppo", "dpo", "judge", "figures", "claims")
TRAINING = ("sft", "reward", "ppo", "dpo")
POLICIES = ("sft", "ppo", "dpo")
# Which stage kinds each one reads (the pipeline's arrows).
UPSTREAM = {"sft": (), "reward": ("sft",), "ppo": ("sft", "reward"), "dpo": ("sft",)}
PRESET_KEYS = {
    "description",
    "sizes",
    "all_sizes",
    "seeds",
    "model",
    "judge",
    "num_processes",
    "accelerate_config",
    "slurm",
    "slurm_cpu",
    "flags",
    "sizes_flags",
    "world_seed",
    "world_posts",
    "pretrain_steps",
    "base_models",
}
EXPERIMENT_KEYS = {"description", "stages", "base", "flags", "include", "presets", "sizes", "seeds", "controls"}


class RegistryError(ValueError):
    """A malformed experiments.toml: the message names the table and key."""


@dataclass
class Registry:
    presets: dict
    experiments: dict
    path: Path


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Parse and check experiments.toml: every key known, every stage, base, include and preset real."""
    path = Path(path or REGISTRY)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{path}: {e}") from None
    presets, experiments = data.get("presets", {}), data.get("experiments", {})
    for name, p in presets.items():
        where = f"{path}: [presets.{name}]"
        for key in p:
            if key not in PRESET_KEYS:
                raise RegistryError(f"{where}: unknown key {key!r} (one of {', '.join(sorted(PRESET_KEYS))})")
        for key in ("sizes", "seeds"):
            if not p.get(key):
                raise RegistryError(f"{where}: {key} must be a non-empty list")
        for table in [p.get("flags", {})] + [
            {k: v for k, v in s.items() if k != "accelerate_config"} for s in p.get("sizes_flags", {}).values()
        ]:
            _check_flags(table, where)
        for size in p.get("sizes_flags", {}):
            if size not in set(p["sizes"]) | set(p.get("all_sizes", [])):
                raise RegistryError(f"{where}: sizes_flags names size {size!r}, which is not in sizes")
    for name, e in experiments.items():
        where = f"{path}: [experiments.{name}]"
        for key in e:
            if key not in EXPERIMENT_KEYS:
                raise RegistryError(f"{where}: unknown key {key!r} (one of {', '.join(sorted(EXPERIMENT_KEYS))})")
        if not e.get("description"):
            raise RegistryError(f"{where}: needs a description")
        if not (e.get("stages") or e.get("base") or e.get("include")):
            raise RegistryError(f"{where}: needs stages, a base, or include")
        for s in e.get("stages", []):
            if s not in STAGES:
                raise RegistryError(f"{where}: unknown stage {s!r} (one of {', '.join(STAGES)})")
        if e.get("base") and e["base"] not in experiments:
            raise RegistryError(f"{where}: base {e['base']!r} is not an experiment")
        for inc in e.get("include", []):
            if inc not in experiments:
                raise RegistryError(f"{where}: include names {inc!r}, which is not an experiment")
        for p in e.get("presets", []):
            if p not in presets:
                raise RegistryError(f"{where}: preset {p!r} does not exist")
        for control, number in e.get("controls", {}).items():
            if control not in experiments:
                raise RegistryError(f"{where}: controls names {control!r}, which is not an experiment")
            if number not in (1, 2, 3, 4, 5):
                raise RegistryError(f"{where}: controls.{control} must be the number (1-5) of the claim it breaks")
        _check_flags(e.get("flags", {}), where)
    for name in experiments:  # bases must not loop
        seen, cur = set(), name
        while cur:
            if cur in seen:
                raise RegistryError(f"{path}: [experiments.{name}]: base chain loops through {cur!r}")
            seen.add(cur)
            cur = experiments[cur].get("base")
    return Registry(presets, experiments, path)


def _check_flags(table: dict, where: str) -> None:
    for stage, flags in table.items():
        if stage not in STAGES:
            raise RegistryError(f"{where}: flags for unknown stage {stage!r}")
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise RegistryError(f"{where}: flags.{stage} must be a list of strings")


def owner_chain(reg: Registry, name: str) -> list[str]:
    chain = []
    while name:
        chain.append(name)
        name = reg.experiments[name].get("base")
    return chain


def experiment_stages(reg: Registry, name: str) -> list[str]:
    for n in owner_chain(reg, name):
        if reg.experiments[n].get("stages"):
            return list(reg.experiments[n]["stages"])
    return []


def stage_owner(reg: Registry, name: str, stage: str) -> str:
    """The experiment whose run folder holds `stage` for experiment `name`: the first in its base chain
    that changes this stage or one upstream of it (an ablation of PPO owns its PPO, not its SFT)."""
    chain = owner_chain(reg, name)
    kinds = {stage, *upstream_closure(stage)}
    for n in chain:
        e = reg.experiments[n]
        if not e.get("base") or any(k in e.get("flags", {}) for k in kinds):
            return n
    return chain[-1]


def upstream_closure(stage: str) -> set[str]:
    out, todo = set(), list(UPSTREAM.get(stage, ()))
    while todo:
        s = todo.pop()
        if s not in out:
            out.add(s)
            todo.extend(UPSTREAM.get(s, ()))
    return out


def stage_flags(reg: Registry, preset: str, name: str, stage: str, size: str) -> list[str]:
    """Preset flags, then the preset's per-size flags, then the experiment chain's (base first); a later
    setting of a flag replaces an earlier one in place."""
    p = reg.presets[preset]
    flags = list(p.get("flags", {}).get(stage, []))
    flags += p.get("sizes_flags", {}).get(size, {}).get(stage, [])
    for n in reversed(owner_chain(reg, name)):
        flags += reg.experiments[n].get("flags", {}).get(stage, [])
    return merge_flags(flags)


def _flag_key(flag: str) -> str:
    """`--ppo.no-whiten-rewards` and `--ppo.whiten-rewards` name the same setting."""
    prefix, _, last = flag[2:].rpartition(".")
    last = last[3:] if last.startswith("no-") else last
    return f"{prefix}.{last}" if prefix else last


def flag_value(flags: list[str], name: str) -> str | None:
    """The value of `name` in a flag list (`--name V` or `--name=V`), or None when it is not set."""
    for i, tok in enumerate(flags):
        if tok == name and i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            return flags[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def merge_flags(flags: list[str]) -> list[str]:
    """Collapse repeated flags (each `--flag [values...]` group) keeping the last value at the first place."""
    groups: dict[str, list[str]] = {}
    cur = None
    for tok in flags:
        if tok.startswith("--"):
            cur = _flag_key(tok)
            groups[cur] = [tok]
        elif cur is None:
            raise RegistryError(f"flag list starts with a value, not a --flag: {flags}")
        else:
            groups[cur].append(tok)
    return [t for g in groups.values() for t in g]


def expand_includes(reg: Registry, name: str) -> list[str]:
    out: list[str] = []

    def visit(n: str) -> None:
        if n in out:
            return
        e = reg.experiments[n]
        if e.get("stages") or e.get("base"):
            out.append(n)
        for inc in e.get("include", []):
            visit(inc)

    visit(name)
    return out


def headline_experiments(reg: Registry, name: str) -> list[str]:
    """The experiments whose runs the cross-size figures pool: the root of each planned experiment's base
    chain (an ablation or a control has a base; its own PPO curves are still drawn)."""
    roots = []
    for n in expand_includes(reg, name):
        while reg.experiments[n].get("base"):
            n = reg.experiments[n]["base"]
        roots.append(n)
    return list(dict.fromkeys(roots))
