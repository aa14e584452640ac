"""Loading snapshots and configs from files, with errors that name the problem."""

from __future__ import annotations

import json
import os
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
