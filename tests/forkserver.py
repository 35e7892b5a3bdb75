"""Start the suite's commands without paying for their imports each time.

Every smoke test runs a stage the way a user does, as a separate process with its own argv, working
directory, environment, stdout, stderr and exit code. A fresh interpreter spends about 3 s importing
torch, transformers, datasets and accelerate before the command does anything, and the default tier runs
a few hundred commands. This server is a process that imports them once (and nothing else: it never runs
a torch op, so no thread pool exists to be forked) and then forks one child per command: the child is the
command's process, as `python -m rlhf_repro.cli ...` or `python experiments/x.py ...` would be, minus
the imports.

What a forked child cannot be is a process started with another environment at import time (OMP thread
counts, offline flags read when huggingface_hub is imported) or through another launcher (torchrun); the
tests' `run_cmd` sends those to a real interpreter, as it does for every command when
RLHF_REPRO_TEST_FORK=0. Commands that test import-time behaviour (`--help` of every script, the README's
commands, the slow tier's quickstart, whose stages start real interpreters) keep the real path too.

Protocol (one request at a time, over the server's stdin/stdout): the client writes one JSON line
{argv, cwd, env, stdout, stderr}; the server forks, answers {"pid": PID} at once, and {"rc": RC} when the
child has exited. The child redirects its stdout and stderr to the two files and exits through the
interpreter's normal shutdown (atexit handlers, flushed streams), so it behaves like a finished process.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

PRELOAD = (
    "torch",
    "numpy",
    "transformers",
    "datasets",
    "accelerate",
    "tyro",
    "tqdm.auto",
    "safetensors.torch",
    "pandas",
)


def _run_child(request: dict) -> None:
    """In the forked child: become the command, then exit with its code."""
    os.setsid()  # its own process group, so a timeout can kill what it starts as well
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    argv = request["argv"]
    if argv[0] == "-m":
        module, rest = argv[1], argv[2:]
        sys.argv = [module, *rest]
        sys.path.insert(0, request["cwd"])
        sys.modules.pop(module, None)  # preloaded by the server: run it afresh as __main__, as `-m` does
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, rest = argv[0], argv[1:]
        sys.argv = [script, *rest]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")


def serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # The model classes the stages load: importing them is most of transformers' cost.
    from transformers import AutoModel, AutoModelForCausalLM, GPTNeoXForCausalLM  # noqa: F401

    import rlhf_repro.cli  # noqa: F401

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                _run_child(request)
            except SystemExit:
                raise
            except BaseException:
                import traceback

                traceback.print_exc()
                raise SystemExit(1) from None
            raise SystemExit(0)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": rc}), flush=True)


if __name__ == "__main__":
    serve()
