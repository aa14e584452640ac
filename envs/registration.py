"""Register the ``rl_manager/`` environment ids and resolve short environment names.

Importing :mod:`rl_manager.envs` calls :func:`register_all`, which is idempotent.
"""

from __future__ import annotations

import difflib
import logging
import re

import gymnasium as gym
from gymnasium.envs.registration import parse_env_id

NAMESPACE = "rl_manager"

#: Episode length of the Gymnasium-Robotics Fetch tasks.
FETCH_MAX_EPISODE_STEPS = 50
#: Episode cap of the planar reacher (the paper's setting).
REACHER_MAX_EPISODE_STEPS = 120

_SAFE_FETCH_IDS: dict[str, str] = {
    f"{NAMESPACE}/SafeFetchReach-v0": "FetchReach",
    f"{NAMESPACE}/SafeFetchPush-v0": "FetchPush",
    f"{NAMESPACE}/SafeFetchPickAndPlace-v0": "FetchPickAndPlace",
    f"{NAMESPACE}/SafeFetchSlide-v0": "FetchSlide",
}

_REACHER_IDS: dict[str, str] = {
    f"{NAMESPACE}/PlanarReacher-v0": "mixed",
    f"{NAMESPACE}/PlanarReacherEasy-v0": "easy",
    f"{NAMESPACE}/PlanarReacherMedium-v0": "medium",
    f"{NAMESPACE}/PlanarReacherHard-v0": "hard",
}

_PAPER_REACHER_IDS: dict[str, str] = {
    f"{NAMESPACE}/PaperReacher-v0": "train",
    f"{NAMESPACE}/PaperReacherEasy-v0": "easy",
    f"{NAMESPACE}/PaperReacherMedium-v0": "medium",
    f"{NAMESPACE}/PaperReacherHard-v0": "hard",
}

logger = logging.getLogger(__name__)
_FULL_ID = re.compile(r"-v\d+$")


def registered_ids() -> list[str]:
    """All ids this package registers, in a stable order."""
    return [*_SAFE_FETCH_IDS, *_REACHER_IDS, *_PAPER_REACHER_IDS]


def register_all() -> None:
    """Register Gymnasium-Robotics and the ``rl_manager/`` ids (safe to call more than once).

    Without ``gymnasium_robotics`` (a machine that only runs the numpy reacher, say) the Fetch ids are
    still registered; making one fails then with gymnasium-robotics' import error.
    """
    try:
        import gymnasium_robotics
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        logger.warning("gymnasium-robotics is not importable (%s): Fetch environments will not work", exc)
    else:
        gym.register_envs(gymnasium_robotics)
    for env_id, task in _SAFE_FETCH_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="rl_manager.envs.safe_fetch:make_safe_fetch",
                kwargs={"task": task},
                max_episode_steps=FETCH_MAX_EPISODE_STEPS,
            )
    # the paper's reacher has no internal step counter: the 120-step cap is this TimeLimit alone
    for ids, entry_point in (
        (_REACHER_IDS, "rl_manager.envs.reacher:PlanarReacherEnv"),
        (_PAPER_REACHER_IDS, "rl_manager.envs.paper_reacher:PaperReacherEnv"),
    ):
        for env_id, difficulty in ids.items():
            if env_id not in gym.registry:
                gym.register(
                    id=env_id,
                    entry_point=entry_point,
                    kwargs={"difficulty": difficulty},
                    max_episode_steps=REACHER_MAX_EPISODE_STEPS,
                )


def _short(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _newest(namespace: str | None, name: str) -> str | None:
    """Newest registered version of ``namespace/name`` (unversioned ids count as version -1)."""
    best: tuple[int, str] | None = None
    for env_id, spec in gym.registry.items():
        if spec.namespace == namespace and spec.name == name:
            version = -1 if spec.version is None else spec.version
            if best is None or version > best[0]:
                best = (version, env_id)
    return None if best is None else best[1]


def _did_you_mean(name: str) -> str:
    names = sorted({_short(s.namespace, s.name) for s in gym.registry.values()} | set(gym.registry))
    plain = {n.split("/", 1)[-1]: n for n in names}
    matches = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    matches += [plain[m] for m in difflib.get_close_matches(name, list(plain), n=3, cutoff=0.6)]
    unique = list(dict.fromkeys(matches))[:3]
    return f" Did you mean {', '.join(repr(m) for m in unique)}?" if unique else ""


def resolve_env_id(name: str, safe: bool = False) -> str:
    """Turn a short environment name into a registered id.

    ``"FetchPickAndPlace"`` resolves to the newest registered version (``"FetchPickAndPlace-v4"``),
    or, with ``safe=True``, to the Safe variant ``"rl_manager/SafeFetchPickAndPlace-v0"``. Names of
    this package's envs resolve without the namespace (``"PlanarReacher"``, ``"PaperReacher"``). Full ids
    (``"...-vN"``) that are registered pass through unchanged.

    :param name: a short name or a full id.
    :param safe: resolve to the variant with a safety cost.
    :return: a registered environment id.
    :raises ValueError: unknown name (with a "did you mean" suggestion), or no Safe variant.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"environment name must be a non-empty string, got {name!r}")
    name = name.strip()
    register_all()
    if _FULL_ID.search(name):
        if name in gym.registry:
            return name
        raise ValueError(f"environment id {name!r} is not registered.{_did_you_mean(name)}")

    try:
        namespace, short, _ = parse_env_id(name)
    except gym.error.Error as exc:
        raise ValueError(f"malformed environment name {name!r}: {exc}") from exc

    if safe:
        base = short.removeprefix("Safe")
        found = _newest(NAMESPACE, f"Safe{base}") if namespace in (None, NAMESPACE) else None
        if found is None:
            safe_names = sorted(
                {
                    _short(s.namespace, s.name)
                    for s in gym.registry.values()
                    if s.namespace == NAMESPACE and s.name.startswith("Safe")
                }
            )
            if _newest(namespace, short) is not None or _newest(NAMESPACE, short) is not None:
                raise ValueError(f"{name!r} has no Safe variant; Safe variants: {safe_names}")
            raise ValueError(f"unknown environment {name!r}.{_did_you_mean(name)}")
        return found

    candidates = [namespace] if namespace is not None else [None, NAMESPACE]
    for ns in candidates:
        found = _newest(ns, short)
        if found is not None:
            return found
    raise ValueError(f"unknown environment {name!r}.{_did_you_mean(name)}")
