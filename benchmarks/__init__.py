"""Benchmarks: speed (`benchmarks.speed`, behind `rlhf-repro bench`) and quality on the simulated world (the
scripts beside this file, each run as `python benchmarks/<name>.py`). Not part of the library: nothing in
`rlhf_repro` imports them."""
