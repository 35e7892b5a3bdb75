"""The plan: an experiment expanded into one node per stage run (stage, size, seed), with the commands
that run them, the markers that say they are done, and the edges between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhf_repro.reproduce.registry import (
    POLICIES,
    TRAINING,
    UPSTREAM,
    Registry,
    RegistryError,
    expand_includes,
    experiment_stages,
    flag_value,
    headline_experiments,
    owner_chain,
    stage_flags,
    stage_owner,
    upstream_closure,
)


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
        return self.out / "base" / "pretrain" / size / str(seed)


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


class Planner:
    """Builds the node graph of one experiment: one builder per stage (`world_nodes`, `base_node`,
    `training_node`, `agreement_node`, `judge_nodes`, `figures_node`, `claims_node`), each returning
    the key of the node it added (a node another experiment already added is shared)."""

    def __init__(self, reg: Registry, experiment: str, layout: Layout, opts: PlanOptions):
        if experiment not in reg.experiments:
            raise RegistryError(f"unknown experiment {experiment!r}; `rlhf-repro list` shows them")
        if opts.preset not in reg.presets:
            raise RegistryError(f"unknown preset {opts.preset!r}; one of {', '.join(reg.presets)}")
        self.reg, self.experiment, self.layout, self.opts = reg, experiment, layout, opts
        self.preset = reg.presets[opts.preset]
        self.tiny = opts.preset == "tiny"
        self.nodes: dict[str, Node] = {}
        self.world_key = self.datasets_key = None
        self.extra_train: list[str] = []
        if opts.track:
            self.extra_train += ["--track", "--wandb-project", opts.wandb_project]
            if opts.wandb_entity:
                self.extra_train += ["--wandb-entity", opts.wandb_entity]
        if opts.threads:
            self.extra_train += ["--threads", str(opts.threads)]

    def add(self, node: Node) -> str:
        self.nodes.setdefault(node.key, node)
        return node.key

    # --- world, datasets, base models (tiny preset) -------------------------------------------------

    def world_nodes(self) -> None:
        layout, preset = self.layout, self.preset
        world = ["sim", "generate", "--out", str(layout.world), "--seed", str(preset.get("world_seed", 1))]
        world += ["--n-posts", str(preset.get("world_posts", 20000)), "--no-progress"]
        self.world_key = self.add(
            Node("world", "world", None, None, None, world, layout.world / "tokenizer" / "tokenizer_config.json")
        )
        datasets = ["build-dataset", "--tldr-source", str(layout.world / "tldr")]
        datasets += ["--comparisons-source", str(layout.world / "comparisons")]
        datasets += ["--tokenizer", str(layout.world / "tokenizer"), "--output-dir", str(layout.data), "--no-progress"]
        datasets += list(preset.get("flags", {}).get("datasets", []))
        self.datasets_key = self.add(
            Node(
                "datasets", "datasets", None, None, None, datasets, layout.data / "build_summary.json", [self.world_key]
            )
        )

    def base_node(self, size: str) -> tuple[str | None, Path | None]:
        """The base model of `size`: (node key, directory holding model/); (None, None) off the tiny preset,
        where SFT starts from the preset's hub model."""
        if not self.tiny:
            return None, None
        shipped = _shipped_base(self.preset, size, self.opts)
        if shipped:
            # The preset starts from a base model the repo ships (pretrained on this very world), as the
            # paper starts from released Pythia weights; the node checks that the world is that one.
            argv = ["sim", "check-base", "--world", str(self.layout.world), "--size", size]
            key = self.add(Node(f"base/{size}", "base", "base", size, None, argv, None, deps=[self.world_key]))
            return key, shipped.parent
        pseed = self.preset.get("world_seed", 1)
        pre_dir = self.layout.pretrained(size, pseed)
        argv = ["pretrain", "--data", str(self.layout.world), "--model-shape", size]
        argv += ["--steps", str(self.preset.get("pretrain_steps", 300)), "--seed", str(pseed)]
        argv += ["--results-dir", str(self.layout.out), "--experiment", "base", "--no-progress"]
        argv += ["--threads", str(self.opts.threads)] if self.opts.threads else []
        # After the datasets: beside them it would start with half the cores and keep them.
        deps = [self.world_key, self.datasets_key]
        key = self.add(Node(f"pretrain/{size}", "pretrain", "base", size, pseed, argv, pre_dir / "summary.json", deps))
        return key, pre_dir

    # --- training stages ----------------------------------------------------------------------------

    def training_node(self, name: str, stage: str, size: str, seed: int, keys: dict, pre_key, pre_dir) -> str:
        """SFT, RM, PPO or DPO of (size, seed), in the run folder of the experiment that owns the stage."""
        reg, opts, layout = self.reg, self.opts, self.layout
        own = stage_owner(reg, name, stage)
        run = layout.run(own, stage, size, seed)
        argv = [stage] + _paths(stage, reg, opts, layout, name, size, seed, self.tiny, pre_dir)
        argv += ["--experiment", own, "--model-name", size, "--seed", str(seed)]
        argv += ["--results-dir", str(layout.results)]
        argv += stage_flags(reg, opts.preset, name, stage, size) + self.extra_train
        if self.tiny:
            argv += ["--no-progress"]
        deps = [keys[u] for u in UPSTREAM[stage] if u in keys]
        deps += [k for k in (self.datasets_key, pre_key) if k]
        cfg = self.preset.get("sizes_flags", {}).get(size, {}).get("accelerate_config")
        key = f"{own}/{stage}/{size}/{seed}"
        return self.add(
            Node(
                key,
                stage,
                own,
                size,
                seed,
                argv,
                run / "summary.json",
                deps,
                cfg or self.preset.get("accelerate_config"),
            )
        )

    def agreement_node(self, name: str, size: str, seed: int, keys: dict) -> str:
        """How often the RM orders the SFT policy's own rollout samples as the gold labeler does: PPO can
        only improve what its reward sees (tiny preset)."""
        rm_run, sft_run = self.nodes[keys["reward"]].marker.parent, self.nodes[keys["sft"]].marker.parent
        out = rm_run / "rm_policy_agreement.json"
        argv = ["sim", "rm-agreement", "--policy", str(sft_run / "model"), "--reward-model"]
        argv += [str(rm_run / "model"), "--query-dataset", str(self.layout.data / "sft"), "--world"]
        argv += [str(self.layout.world), "--seed", str(seed), "--out", str(out)]
        # At the paper's 53 tokens and, on the same samples, at PPO's own response length.
        length = flag_value(stage_flags(self.reg, self.opts.preset, name, "ppo", size), "--response-length")
        if length is not None:
            argv += ["--also-at-length", length]
        key = f"{name}/rm-agreement/{size}/{seed}"
        return self.add(Node(key, "agreement", name, size, seed, argv, out, [keys["reward"]]))

    def judge_nodes(self, name: str, ablation: bool, size: str, seed: int, keys: dict) -> list[str]:
        """A judge run per policy this experiment trained (and the base model's samples, when SFT
        evaluated it before training with --eval-at-start)."""
        tables = [(stage, "") for stage in POLICIES]
        if "sft" in keys and "--eval-at-start" in self.nodes[keys["sft"]].argv:
            tables.append(("sft", "_start"))
        added = []
        for stage, suffix in tables:
            if stage not in keys or (ablation and self.nodes[keys[stage]].experiment != name):
                continue
            policy = self.nodes[keys[stage]]
            run = policy.marker.parent
            out = run / f"judged_validation{suffix}.csv"
            argv = ["judge", "--input", str(run / f"query_responses_validation{suffix}.csv"), "--out", str(out)]
            argv += list(self.preset.get("judge", ["--backend", "gold"]))
            if self.tiny:
                argv += ["--world", str(self.layout.world), "--no-progress"]
            who = "base" if suffix else stage
            key = f"{policy.experiment}/judge-{who}/{size}/{seed}"
            marker = Path(str(out) + ".summary.json")
            added.append(self.add(Node(key, "judge", policy.experiment, size, seed, argv, marker, [keys[stage]])))
        return added

    # --- after every run ----------------------------------------------------------------------------

    def figures_node(self, after: list[str]) -> str:
        argv = ["figures", str(self.layout.results)]
        argv += ["--world", str(self.layout.world)] if self.tiny else []
        argv += [a for h in headline_experiments(self.reg, self.experiment) for a in ("--headline", h)]
        return self.add(Node("figures", "figures", None, None, None, argv, None, list(dict.fromkeys(after))))

    def claims_node(self, name: str, after: list[str]) -> str:
        argv = ["claims", str(self.layout.results), "--experiment", name]
        if self.tiny:
            argv += ["--world", str(self.layout.world)]
        planned = set(expand_includes(self.reg, self.experiment))
        for control, number in self.reg.experiments[name].get("controls", {}).items():
            if control in planned:
                argv += ["--control", f"{control}:{number}"]
        return self.add(Node(f"{name}/claims", "claims", name, None, None, argv, None, list(dict.fromkeys(after))))

    # --- one experiment's sizes and seeds -------------------------------------------------------------

    def sizes_and_seeds(self, name: str) -> tuple[list[str], list[int]]:
        reg, opts, top = self.reg, self.opts, self.reg.experiments[self.experiment]
        chain = owner_chain(reg, name)
        sizes = opts.sizes or next((reg.experiments[n]["sizes"] for n in chain if "sizes" in reg.experiments[n]), None)
        sizes = sizes or top.get("sizes") or self.preset["sizes"]
        seeds = opts.seeds or next((reg.experiments[n]["seeds"] for n in chain if "seeds" in reg.experiments[n]), None)
        seeds = seeds or top.get("seeds") or self.preset["seeds"]
        known = set(self.preset["sizes"]) | set(self.preset.get("all_sizes", []))
        for size in sizes:
            if size not in known:
                raise RegistryError(f"preset {opts.preset!r} has no size {size!r} (one of {', '.join(sorted(known))})")
        return sizes, seeds

    def stages_of(self, name: str) -> list[str]:
        """The stages `name` runs. An ablation runs the stages it changes, what follows them, and their
        inputs (the base's own run folders); not the base's unrelated stages."""
        stages = experiment_stages(self.reg, name)
        if self.reg.experiments[name].get("base"):
            owned = {s for s in TRAINING if s in stages and stage_owner(self.reg, name, s) == name}
            need = owned | {u for s in owned for u in upstream_closure(s)}
            stages = [s for s in stages if s in need or s not in TRAINING]
        return stages


def plan(reg: Registry, experiment: str, layout: Layout, opts: PlanOptions) -> list[Node]:
    """Every node of `experiment` (and of what it includes) in an order that respects dependencies."""
    p = Planner(reg, experiment, layout, opts)
    if p.tiny:
        p.world_nodes()
    after: list[str] = []  # every stage run: figures and claims wait for all of them
    claim_experiments = []
    for name in expand_includes(reg, experiment):
        e = reg.experiments[name]
        if e.get("presets") and opts.preset not in e["presets"]:
            raise RegistryError(f"experiment {name!r} runs only with preset(s) {', '.join(e['presets'])}")
        sizes, seeds = p.sizes_and_seeds(name)
        stages = p.stages_of(name)
        if "claims" in e.get("stages", []):
            claim_experiments.append(name)
        for size in sizes:
            pre_key, pre_dir = p.base_node(size)
            for seed in seeds:
                keys: dict[str, str] = {}
                for stage in [s for s in TRAINING if s in stages]:
                    keys[stage] = p.training_node(name, stage, size, seed, keys, pre_key, pre_dir)
                    after.append(keys[stage])
                if p.tiny and "reward" in keys and "sft" in keys and p.nodes[keys["reward"]].experiment == name:
                    after.append(p.agreement_node(name, size, seed, keys))
                if "judge" in stages:
                    after += p.judge_nodes(name, bool(e.get("base")), size, seed, keys)
    # The claims first: the report that `figures` writes carries their tables (claims read run folders only).
    claims = [p.claims_node(name, after) for name in claim_experiments]
    if "figures" in {s for n in expand_includes(reg, experiment) for s in experiment_stages(reg, n)}:
        p.figures_node(after + claims)
    return _toposort(p.nodes)


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
