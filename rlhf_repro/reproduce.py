"""`rlhf-repro reproduce EXPERIMENT`: a named experiment as a graph of stage runs, launched locally, with
`accelerate launch`, or as Slurm jobs.

    rlhf-repro list                                             presets and experiments
    rlhf-repro reproduce quickstart                             the simulated world end to end (tiny preset)
    rlhf-repro reproduce paper --preset paper --launcher slurm --dry-run   print the sbatch files
    rlhf-repro reproduce ablations --preset tiny --seeds 1 2    every ablation beside the paper's runs

Experiments and presets are data (rlhf_repro/experiments.toml). An experiment expands to one node per
(stage, size, seed); an ablation shares its base's upstream run folders. Each node is a `rlhf-repro
<stage> ...` command that writes RESULTS/<experiment>/<stage>/<size>/<seed>/. A node whose output
marker exists (a run folder's summary.json, a judged table's summary) is skipped, and a stage killed
half-way resumes from its checkpoint, so rerunning the same command finishes a half-done sweep.

Layout under --out: world/ and data/ (tiny preset), base/ (pretrained tiny models), results/ (run
folders, figures in results/report/, claims), logs/ (one log per node with --jobs > 1), slurm/ (sbatch
files and submit.sh).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

REGISTRY = Path(__file__).with_name("experiments.toml")
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


# ---------------------------------------------------------------------------------------------------
# The plan: one node per stage run


@dataclass
class Node:
    key: str
    stage: str
    experiment: str | None
    size: str | None
    seed: int | None
    argv: list[str]  # arguments of `rlhf-repro`
    marker: Path | None  # exists once the node is done (None: always runs)
    deps: list[str] = field(default_factory=list)
    accelerate_config: str | None = None

    @property
    def training(self) -> bool:
        return self.stage in TRAINING

    def done(self) -> bool:
        return self.marker is not None and self.marker.exists()


@dataclass
class Layout:
    out: Path

    @property
    def results(self) -> Path:
        return self.out / "results"

    @property
    def world(self) -> Path:
        return self.out / "world"

    @property
    def data(self) -> Path:
        return self.out / "data"

    def run(self, experiment: str, stage: str, size: str, seed: int | str) -> Path:
        return self.results / experiment / stage / size / str(seed)

    def pretrained(self, size: str, seed: int) -> Path:
        return self.out / "base" / "base" / "pretrain" / size / str(seed)


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
    kinds = {stage, *_upstream_closure(stage)}
    for n in chain:
        e = reg.experiments[n]
        if not e.get("base") or any(k in e.get("flags", {}) for k in kinds):
            return n
    return chain[-1]


def _upstream_closure(stage: str) -> set[str]:
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


def _flag_value(flags: list[str], name: str) -> str | None:
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


@dataclass
class PlanOptions:
    preset: str = "tiny"
    sizes: list[str] | None = None
    seeds: list[int] | None = None
    track: bool = False
    wandb_project: str = "rlhf-repro"
    wandb_entity: str | None = None
    threads: int | None = None
    pretrain_base: bool = False


def plan(reg: Registry, experiment: str, layout: Layout, opts: PlanOptions) -> list[Node]:
    """Every node of `experiment` (and of what it includes) in an order that respects dependencies."""
    if experiment not in reg.experiments:
        raise RegistryError(f"unknown experiment {experiment!r}; `rlhf-repro list` shows them")
    if opts.preset not in reg.presets:
        raise RegistryError(f"unknown preset {opts.preset!r}; one of {', '.join(reg.presets)}")
    preset = reg.presets[opts.preset]
    nodes: dict[str, Node] = {}
    top = reg.experiments[experiment]

    def add(node: Node) -> str:
        nodes.setdefault(node.key, node)
        return node.key

    tiny = opts.preset == "tiny"
    extra_train = []
    if opts.track:
        extra_train += ["--track", "--wandb-project", opts.wandb_project]
        if opts.wandb_entity:
            extra_train += ["--wandb-entity", opts.wandb_entity]
    if opts.threads:
        extra_train += ["--threads", str(opts.threads)]

    world_key = datasets_key = None
    if tiny:
        world_key = add(
            Node(
                "world",
                "world",
                None,
                None,
                None,
                ["sim", "generate", "--out", str(layout.world), "--seed", str(preset.get("world_seed", 1))]
                + ["--n-posts", str(preset.get("world_posts", 20000)), "--no-progress"],
                layout.world / "tokenizer" / "tokenizer_config.json",
            )
        )
        datasets_key = add(
            Node(
                "datasets",
                "datasets",
                None,
                None,
                None,
                ["build-dataset", "--tldr-source", str(layout.world / "tldr")]
                + ["--comparisons-source", str(layout.world / "comparisons")]
                + ["--tokenizer", str(layout.world / "tokenizer"), "--output-dir", str(layout.data), "--no-progress"]
                + list(preset.get("flags", {}).get("datasets", [])),
                layout.data / "build_summary.json",
                deps=[world_key],
            )
        )

    all_keys: list[str] = []
    claim_experiments = []
    for name in expand_includes(reg, experiment):
        e = reg.experiments[name]
        if e.get("presets") and opts.preset not in e["presets"]:
            raise RegistryError(f"experiment {name!r} runs only with preset(s) {', '.join(e['presets'])}")
        chain = owner_chain(reg, name)
        sizes = opts.sizes or next((reg.experiments[n]["sizes"] for n in chain if "sizes" in reg.experiments[n]), None)
        sizes = sizes or top.get("sizes") or preset["sizes"]
        seeds = opts.seeds or next((reg.experiments[n]["seeds"] for n in chain if "seeds" in reg.experiments[n]), None)
        seeds = seeds or top.get("seeds") or preset["seeds"]
        known = set(preset["sizes"]) | set(preset.get("all_sizes", []))
        for size in sizes:
            if size not in known:
                raise RegistryError(f"preset {opts.preset!r} has no size {size!r} (one of {', '.join(sorted(known))})")
        stages = experiment_stages(reg, name)
        if e.get("base"):
            # An ablation runs the stages it changes, what follows them, and their inputs (the base's own
            # run folders); not the base's unrelated stages.
            owned = {s for s in TRAINING if s in stages and stage_owner(reg, name, s) == name}
            need = owned | {u for s in owned for u in _upstream_closure(s)}
            stages = [s for s in stages if s in need or s not in TRAINING]
        if "claims" in e.get("stages", []):
            claim_experiments.append(name)
        for size in sizes:
            pre_key = None
            shipped = tiny and _shipped_base(preset, size, opts)
            if shipped:
                # The preset starts from a base model the repo ships (pretrained on this very world), as the
                # paper starts from released Pythia weights; the node checks that the world is that one.
                pre_dir = shipped.parent
                pre_key = add(
                    Node(
                        f"base/{size}",
                        "base",
                        "base",
                        size,
                        None,
                        ["sim", "check-base", "--world", str(layout.world), "--size", size],
                        None,
                        deps=[world_key],
                    )
                )
            elif tiny:
                pseed = preset.get("world_seed", 1)
                pre_dir = layout.pretrained(size, pseed)
                pre_key = add(
                    Node(
                        f"pretrain/{size}",
                        "pretrain",
                        "base",
                        size,
                        pseed,
                        ["pretrain", "--data", str(layout.world), "--model-preset", size]
                        + ["--steps", str(preset.get("pretrain_steps", 300)), "--seed", str(pseed)]
                        + ["--results-dir", str(layout.out / "base"), "--experiment", "base", "--no-progress"]
                        + (["--threads", str(opts.threads)] if opts.threads else []),
                        pre_dir / "summary.json",
                        # After the datasets: beside them it would start with half the cores and keep them.
                        deps=[world_key, datasets_key],
                    )
                )
            for seed in seeds:
                keys: dict[str, str] = {}
                for stage in [s for s in ("sft", "reward", "ppo", "dpo") if s in stages]:
                    own = stage_owner(reg, name, stage)
                    run = layout.run(own, stage, size, seed)
                    argv = [stage] + _paths(stage, reg, opts, layout, name, size, seed, tiny, pre_dir if tiny else None)
                    argv += ["--experiment", own, "--model-name", size, "--seed", str(seed)]
                    argv += ["--results-dir", str(layout.results)]
                    argv += stage_flags(reg, opts.preset, name, stage, size) + extra_train
                    if tiny:
                        argv += ["--no-progress"]
                    deps = [keys[u] for u in UPSTREAM[stage] if u in keys]
                    deps += [k for k in (datasets_key, pre_key) if k]
                    cfg = preset.get("sizes_flags", {}).get(size, {}).get("accelerate_config")
                    keys[stage] = add(
                        Node(
                            f"{own}/{stage}/{size}/{seed}",
                            stage,
                            own,
                            size,
                            seed,
                            argv,
                            run / "summary.json",
                            deps,
                            cfg or preset.get("accelerate_config"),
                        )
                    )
                    all_keys.append(keys[stage])
                if tiny and "reward" in keys and "sft" in keys and nodes[keys["reward"]].experiment == name:
                    # How often the RM orders the SFT policy's own rollout samples as the gold labeler does:
                    # PPO can only improve what its reward sees.
                    rm_run, sft_run = nodes[keys["reward"]].marker.parent, nodes[keys["sft"]].marker.parent
                    out = rm_run / "rm_policy_agreement.json"
                    argv = ["sim", "rm-agreement", "--policy", str(sft_run / "model"), "--reward-model"]
                    argv += [str(rm_run / "model"), "--query-dataset", str(layout.data / "sft"), "--world"]
                    argv += [str(layout.world), "--seed", str(seed), "--out", str(out)]
                    # At the paper's 53 tokens and, on the same samples, at PPO's own response length.
                    length = _flag_value(stage_flags(reg, opts.preset, name, "ppo", size), "--response-length")
                    if length is not None:
                        argv += ["--also-at-length", length]
                    k = add(
                        Node(
                            f"{name}/rm-agreement/{size}/{seed}",
                            "agreement",
                            name,
                            size,
                            seed,
                            argv,
                            out,
                            [keys["reward"]],
                        )
                    )
                    all_keys.append(k)
                if "judge" in stages:
                    tables = [(stage, "") for stage in POLICIES]
                    # The base model's samples, when SFT evaluated it before training (--eval-at-start).
                    if "sft" in keys and "--eval-at-start" in nodes[keys["sft"]].argv:
                        tables.append(("sft", "_start"))
                    for stage, suffix in tables:
                        if stage not in keys or (e.get("base") and nodes[keys[stage]].experiment != name):
                            continue
                        run = nodes[keys[stage]].marker.parent
                        out = run / f"judged_validation{suffix}.csv"
                        table = run / f"query_responses_validation{suffix}.csv"
                        argv = ["judge", "--input", str(table), "--out", str(out)]
                        argv += list(preset.get("judge", ["--backend", "gold"]))
                        if tiny:
                            argv += ["--world", str(layout.world), "--no-progress"]
                        who = "base" if suffix else stage
                        k = add(
                            Node(
                                f"{nodes[keys[stage]].experiment}/judge-{who}/{size}/{seed}",
                                "judge",
                                nodes[keys[stage]].experiment,
                                size,
                                seed,
                                argv,
                                Path(str(out) + ".summary.json"),
                                [keys[stage]],
                            )
                        )
                        all_keys.append(k)
    stages_top = {s for n in expand_includes(reg, experiment) for s in experiment_stages(reg, n)}
    if "figures" in stages_top:
        add(
            Node(
                "figures",
                "figures",
                None,
                None,
                None,
                ["figures", str(layout.results)]
                + (["--world", str(layout.world)] if tiny else [])
                + [a for h in headline_experiments(reg, experiment) for a in ("--headline", h)],
                None,
                list(dict.fromkeys(all_keys)),
            )
        )
        all_keys.append("figures")
    planned = set(expand_includes(reg, experiment))
    for name in claim_experiments:
        argv = ["claims", str(layout.results), "--experiment", name]
        if tiny:
            argv += ["--world", str(layout.world)]
        for control, number in reg.experiments[name].get("controls", {}).items():
            if control in planned:
                argv += ["--control", f"{control}:{number}"]
        add(Node(f"{name}/claims", "claims", name, None, None, argv, None, list(dict.fromkeys(all_keys))))
    return _toposort(nodes)


def _shipped_base(preset: dict, size: str, opts: PlanOptions) -> Path | None:
    """The shipped base model's `model/` directory when the preset uses shipped base models, this size has
    one and --pretrain-base is off (else None: the plan pretrains one)."""
    if preset.get("base_models") != "shipped" or opts.pretrain_base:
        return None
    from rlhf_repro.sim.shipped import shipped_model_dir, shipped_sizes

    return shipped_model_dir(size) if size in shipped_sizes() else None


def _paths(stage, reg, opts, layout, name, size, seed, tiny, pre_dir) -> list[str]:
    """The path flags that wire a stage to its upstream run folders (and, on tiny, the world's data)."""
    preset = reg.presets[opts.preset]
    sft_run = layout.run(stage_owner(reg, name, "sft"), "sft", size, seed)
    data = []
    if stage == "sft":
        base = str(pre_dir / "model") if tiny else preset["model"].format(size=size)
        data = ["--base-model", base]
        if tiny:
            data += ["--query-dataset", str(layout.data / "sft")]
        return data
    data = ["--sft-model-path", str(sft_run / "model")]
    if tiny:
        data += ["--query-dataset", str(layout.data / "sft")]
        if stage in ("reward", "dpo"):
            data += ["--label-dataset", str(layout.data / "preference")]
    if stage == "ppo":
        rm_run = layout.run(stage_owner(reg, name, "reward"), "reward", size, seed)
        data += ["--reward-model-path", str(rm_run / "model")]
    return data


def _toposort(nodes: dict[str, Node]) -> list[Node]:
    order, state = [], {}

    def visit(k: str) -> None:
        if state.get(k) == 2:
            return
        if state.get(k) == 1:
            raise RegistryError(f"dependency cycle through {k}")
        state[k] = 1
        for d in nodes[k].deps:
            visit(d)
        state[k] = 2
        order.append(nodes[k])

    for k in nodes:
        visit(k)
    return order


# ---------------------------------------------------------------------------------------------------
# Launchers


def rlhf_command(node: Node) -> list[str]:
    return ["rlhf-repro", *node.argv]


def accelerate_command(node: Node, num_processes: int | None) -> list[str]:
    """`accelerate launch` of a training stage's module with the preset's config (others run as is)."""
    if not node.training:
        return rlhf_command(node)
    cmd = ["accelerate", "launch"]
    if node.accelerate_config:
        cmd += ["--config_file", node.accelerate_config]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + ["-m", f"experiments.{node.stage}", *node.argv[1:]]


def _local_argv(cmd: list[str]) -> list[str]:
    """Run `rlhf-repro ...` with this interpreter (works without the console script on PATH)."""
    if cmd[0] == "rlhf-repro":
        return [sys.executable, "-m", "rlhf_repro.cli", *cmd[1:]]
    if cmd[:2] == ["accelerate", "launch"]:
        return [sys.executable, "-m", "accelerate.commands.launch", *cmd[2:]]
    return cmd


def run_local(
    nodes: list[Node], commands: dict[str, list[str]], jobs: int, logs: Path, stream: bool, auto_threads: bool = False
) -> int:
    """Run pending nodes in dependency order, `jobs` at a time; skip done ones; stop scheduling on the
    first failure (running ones finish) and return its exit code. With `auto_threads`, each training
    process gets the machine's cores divided by the number of processes sharing them at its start."""
    done = {n.key for n in nodes if n.done()}
    for n in nodes:
        if n.key in done:
            print(f"[skip] {n.key}: {n.marker} exists", flush=True)
    pending = [n for n in nodes if n.key not in done]
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    failed = 0
    total, started = len(pending), 0
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        ready = [n for n in pending if all(d in done for d in n.deps)] if not failed else []
        while ready and len(running) < jobs:
            n = ready.pop(0)
            pending.remove(n)
            started += 1
            shown = list(commands[n.key])
            if auto_threads and (n.training or n.stage == "pretrain") and "--threads" not in shown:
                # Split the cores among the processes about to share them: a stage running alone gets all.
                share = max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(running) + 1 + len(ready))))
                shown += ["--threads", str(share)]
            cmd = _local_argv(shown)
            print(f"[{started}/{total}] {n.key}: {shlex.join(shown)}", flush=True)
            if stream and jobs == 1:
                proc, fh = subprocess.Popen(cmd), None
            else:
                fh = open(logs / (n.key.replace("/", "__") + ".log"), "w")
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            running[n.key] = (proc, time.time(), fh)
        if not running:
            break
        time.sleep(0.2)
        for key, (proc, t0, fh) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[key]
            if fh:
                fh.close()
            if rc == 0:
                done.add(key)
                print(f"[done] {key} in {time.time() - t0:.0f} s", flush=True)
            else:
                failed = failed or rc
                log = logs / (key.replace("/", "__") + ".log")
                where = f"; log: {log}" if fh else ""
                print(f"[FAILED] {key} (exit {rc}){where}", file=sys.stderr, flush=True)
                if fh and log.exists():
                    sys.stderr.write("".join(log.read_text().splitlines(True)[-30:]))
    if failed:
        left = [n.key for n in pending]
        if left:
            print(f"not started because of the failure: {', '.join(left)}", file=sys.stderr)
        print("rerun the same command to resume: finished stages are skipped", file=sys.stderr)
    return failed


def slurm_groups(nodes: list[Node]) -> list[tuple[str, list[Node]]]:
    """One Slurm job per (experiment, stage, size), an array over its seeds; others alone."""
    groups: dict[str, list[Node]] = {}
    for n in nodes:
        if n.seed is not None and n.stage != "pretrain":
            gid = n.key.rsplit("/", 1)[0]
        else:
            gid = n.key
        groups.setdefault(gid, []).append(n)
    return list(groups.items())


def _job_name(gid: str) -> str:
    return gid.replace("/", "_")


def slurm_scripts(
    nodes: list[Node], preset: dict, commands: dict[str, list[str]], logs: Path
) -> tuple[dict[str, str], str]:
    """The sbatch file of each group and a submit.sh chaining them with --dependency=afterok."""
    groups = slurm_groups(nodes)
    group_of = {n.key: gid for gid, ns in groups for n in ns}
    files: dict[str, str] = {}
    submit = [
        "#!/usr/bin/env bash",
        "# Submit every stage job; each waits for its inputs (afterok).",
        "set -euo pipefail",
    ]
    submit.append("# Run it from the directory `rlhf-repro reproduce` ran in: the jobs' paths are relative to it.")
    submit.append('HERE="$(dirname "$0")"')
    for gid, ns in groups:
        name = _job_name(gid)
        lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={name}"]
        header = preset.get("slurm", []) if ns[0].training else preset.get("slurm_cpu", preset.get("slurm", []))
        lines += [f"#SBATCH {h}" for h in header]
        lines += [f"#SBATCH --output={logs}/{name}_" + ("%A_%a.out" if len(ns) > 1 else "%j.out")]
        if len(ns) > 1:
            lines += [f"#SBATCH --array=0-{len(ns) - 1}"]
        lines += ["set -euo pipefail"]
        if len(ns) > 1:
            seeds = " ".join(str(n.seed) for n in ns)
            lines += [f"SEEDS=({seeds})", "SEED=${SEEDS[$SLURM_ARRAY_TASK_ID]}"]
            cmd = _seed_template(commands[ns[0].key], ns[0].seed)
            for other in ns[1:]:
                if _seed_template(commands[other.key], other.seed) != cmd:
                    raise RegistryError(f"{gid}: seeds' commands differ beyond the seed; cannot share one array job")
            marker = _seed_template([str(ns[0].marker)], ns[0].seed)[0] if ns[0].marker else None
        else:
            cmd, marker = commands[ns[0].key], str(ns[0].marker) if ns[0].marker else None
        if marker:
            lines += [f'if [ -f "{marker}" ]; then echo "done already: {marker}"; exit 0; fi']
        run = " ".join(_quote_keep_vars(a) for a in cmd)
        lines += [("srun " if ns[0].training else "") + run, ""]
        files[f"{name}.sbatch"] = "\n".join(lines)
        deps = sorted({group_of[d] for n in ns for d in n.deps if d in group_of and group_of[d] != gid})
        var = "JOB_" + "".join(c if c.isalnum() else "_" for c in name)
        dep = ""
        if deps:
            ids = ":".join("${JOB_" + "".join(c if c.isalnum() else "_" for c in _job_name(d)) + "}" for d in deps)
            dep = f" --dependency=afterok:{ids}"
        submit.append(f'{var}=$(sbatch --parsable{dep} "$HERE/{name}.sbatch")')
        submit.append(f'echo "{name}: ${{{var}}}"')
    return files, "\n".join(submit) + "\n"


def _seed_template(cmd: list[str], seed: int) -> list[str]:
    """The command with its seed (the --seed value and the /SEED/ run-folder level) as ${SEED}."""
    out = []
    for i, a in enumerate(cmd):
        if i > 0 and cmd[i - 1] == "--seed" and a == str(seed):
            out.append("${SEED}")
        else:
            out.append(re.sub(rf"/{seed}(?=/|$)", "/${SEED}", a))
    return out


def _quote_keep_vars(a: str) -> str:
    """Shell-quote an argument but let ${SEED} expand (double quotes)."""
    if "${SEED}" in a:
        return '"' + a.replace('"', '\\"') + '"'
    return shlex.quote(a)


# ---------------------------------------------------------------------------------------------------
# CLI


def list_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-repro list", description="Presets and named experiments.")
    parser.add_argument("--registry", default=None, help="experiments.toml to read (default: the packaged one)")
    args = parser.parse_args(argv)
    try:
        reg = load_registry(args.registry)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("presets:")
    for name, p in reg.presets.items():
        sizes = ", ".join(p.get("all_sizes", p["sizes"]))
        print(f"  {name:24s} {p['description']}")
        print(f"  {'':24s} sizes {sizes} (default {', '.join(p['sizes'])}); seeds {' '.join(map(str, p['seeds']))}")
    print("experiments:")
    for name, e in reg.experiments.items():
        extra = []
        if e.get("base"):
            extra.append(f"base {e['base']}")
        if e.get("flags"):
            extra.append("; ".join(f"{s}: {' '.join(f)}" for s, f in e["flags"].items()))
        if e.get("presets"):
            extra.append("preset " + "/".join(e["presets"]))
        print(f"  {name:24s} {e['description']}")
        if extra:
            print(f"  {'':24s} ({'; '.join(extra)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhf-repro reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("experiment", help="a named experiment (`rlhf-repro list`)")
    p.add_argument("--preset", default="tiny", help="model family and batch geometry: tiny (default) or paper")
    p.add_argument("--launcher", choices=("local", "accelerate", "slurm"), default="local", help="how stages run")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the experiment's or preset's)")
    p.add_argument("--sizes", nargs="+", default=None, help="model sizes (default: the experiment's or preset's)")
    p.add_argument("--out", default=None, help="root of world/, data/, base/, results/, logs/, slurm/ (default runs)")
    p.add_argument("--dry-run", action="store_true", help="print the commands (or sbatch files) without running")
    p.add_argument("--jobs", type=int, default=1, help="local launcher: stages run at once when their inputs are ready")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per stage process (default: torch's; with --jobs > 1, the cores split among running "
        "stages)",
    )
    p.add_argument("--num-processes", type=int, default=None, help="accelerate: processes per stage (default preset)")
    p.add_argument(
        "--pretrain-base",
        action="store_true",
        help="tiny preset: pretrain the base models on this world (pretrain_steps) instead of starting from the "
        "shipped ones (rlhf_repro/sim/base_models/), e.g. for another world seed",
    )
    p.add_argument("--track", action="store_true", help="log every training stage to W&B (group = experiment)")
    p.add_argument("--wandb-project", default="rlhf-repro", help="W&B project with --track")
    p.add_argument("--wandb-entity", default=None, help="W&B entity with --track")
    p.add_argument("--quiet", action="store_true", help="local launcher: write stage output to logs/ only")
    p.add_argument("--registry", default=None, help="experiments.toml to read (default: the packaged one)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reg = load_registry(args.registry)
        layout = Layout(Path(args.out or "runs"))
        opts = PlanOptions(
            args.preset,
            args.sizes,
            args.seeds,
            args.track,
            args.wandb_project,
            args.wandb_entity,
            args.threads,
            args.pretrain_base,
        )
        nodes = plan(reg, args.experiment, layout, opts)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    preset = reg.presets[args.preset]
    logs = layout.out / "logs"
    if args.launcher in ("accelerate", "slurm"):
        nproc = args.num_processes or preset.get("num_processes")
        commands = {n.key: accelerate_command(n, nproc) for n in nodes}
    else:
        commands = {n.key: rlhf_command(n) for n in nodes}

    if args.launcher == "slurm":
        todo = [n for n in nodes if not n.done()]
        keep = {n.key for n in todo}
        for n in todo:
            n.deps = [d for d in n.deps if d in keep]
        files, submit = slurm_scripts(todo, preset, commands, logs)
        if args.dry_run:
            for name, text in files.items():
                print(f"==> slurm/{name} <==\n{text}")
            print(f"==> slurm/submit.sh <==\n{submit}")
            return 0
        folder = layout.out / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
        (folder / "submit.sh").write_text(submit)
        print(f"wrote {len(files)} sbatch files and submit.sh to {folder}; submitting", flush=True)
        return subprocess.run(["bash", str(folder / "submit.sh")]).returncode

    if args.dry_run:
        for n in nodes:
            state = "done, skipped" if n.done() else "to run"
            after = f" (after {', '.join(n.deps)})" if n.deps else ""
            print(f"# {n.key}: {state}{after}")
            print(shlex.join(commands[n.key]))
        return 0
    t0 = time.time()
    jobs = max(1, args.jobs)
    rc = run_local(nodes, commands, jobs, logs, stream=not args.quiet, auto_threads=jobs > 1 and not args.threads)
    print(f"reproduce {args.experiment}: {'failed' if rc else 'finished'} in {time.time() - t0:.0f} s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
