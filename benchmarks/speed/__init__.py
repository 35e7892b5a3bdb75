"""Speed benchmarks behind `rlhf-repro bench`: `bench` (the subcommands, and sampling), `ppo` (PPO against
TRL), `steps` (each stage's update)."""
