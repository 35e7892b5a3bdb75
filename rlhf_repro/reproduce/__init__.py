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

from rlhf_repro.reproduce.cli import build_parser, list_main, main
from rlhf_repro.reproduce.launch import accelerate_command, rlhf_command, run_local, slurm_scripts
from rlhf_repro.reproduce.plan import Layout, Node, PlanOptions, plan
from rlhf_repro.reproduce.registry import Registry, RegistryError, load_registry, merge_flags

__all__ = [
    "Layout",
    "Node",
    "PlanOptions",
    "Registry",
    "RegistryError",
    "accelerate_command",
    "build_parser",
    "list_main",
    "load_registry",
    "main",
    "merge_flags",
    "plan",
    "rlhf_command",
    "run_local",
    "slurm_scripts",
]
