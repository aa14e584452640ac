"""Loading snapshots and configs from files, with errors that name the problem; atomic file writes;
child processes that die with their parent."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class InputError(ValueError):
    """A user-supplied file is missing, unreadable or invalid."""


def load_data(path: str | os.PathLike) -> Any:
    """Read a JSON or YAML file (YAML via ``safe_load``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: {exc}") from exc


def validation_summary(exc: ValidationError, limit: int = 10) -> str:
    """One line per error: ``location: message``."""
    lines = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        lines.append(f"  ... and {more} more")
    return "\n".join(lines)


def load_model(path: str | os.PathLike, model: type[M]) -> M:
    """Load and validate ``model`` from a JSON/YAML file.

    :raises InputError: naming the file and each invalid field.
    """
    data = load_data(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{path}: invalid {model.__name__}:\n{validation_summary(exc)}") from exc


#: infix of the temporary files of :func:`atomic_path` (``.last_model.partial.zip``)
PARTIAL = ".partial"


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed process left in ``folder`` (see :func:`atomic_path`); return them."""
    found = sorted(Path(folder).glob(f".*{PARTIAL}*"))
    for p in found:
        p.unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    A run killed at any moment leaves either the old file or the new one, never a torn one. The
    temporary name keeps the suffix (SB3 appends ``.zip``/``.pkl`` to names without one).

    :param path: the file to (re)write.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.stem}{PARTIAL}{p.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(p.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def die_with_parent(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that makes the child receive ``signum`` when its
    parent dies (Linux ``PR_SET_PDEATHSIG``); ``None`` on other platforms.

    A parent killed with SIGKILL runs no clean-up, so without it the child lives on: a ``llama-server``
    holding a gigabyte and a core, or a training run writing into a folder that a retry resumes. The
    signal follows the *thread* that started the child. libc is loaded here, in the parent: the
    returned function only makes the system call.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(1, signum)  # 1 = PR_SET_PDEATHSIG

    return preexec
