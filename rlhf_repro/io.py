"""File I/O that never leaves half-written results, and input errors that say where the problem is."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class InputError(ValueError):
    """Bad input, reported with the file, line (1-based) and field where it was found."""

    def __init__(
        self, message: str, path: str | os.PathLike | None = None, line: int | None = None, field: str | None = None
    ):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path`, on error it is removed.

    Whatever was at `path` before stays untouched until the new contents are complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():  # killed between the two renames below: restore the old version
        os.replace(old, path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    had_old = path.exists()
    if had_old:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line; errors name the file and line
    (`rlhf_repro.readers.read_jsonl`, the one JSONL reader)."""
    from rlhf_repro.readers import read_jsonl as read

    yield from read(path)


HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(name: str) -> bool:
    """True for `org/name` or `name` (a model hub id); False for paths like `./x`, `/x` or `a/b/c`."""
    return bool(HUB_ID_RE.match(name)) and not Path(name).exists()


def from_hub(kind: str, name: str, load, *args, **kwargs):
    """Call a hub loader; a failure (offline, unknown id, no access) becomes one clear InputError."""
    try:
        return load(*args, **kwargs)
    except Exception as e:  # the hub libraries raise many types: OSError, ConnectionError, HTTP errors
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise InputError(
            f"could not load {kind} {name!r} from the Hugging Face hub{offline}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Pass a local path instead, or check the id and network."
        ) from None
