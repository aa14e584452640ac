"""Decision-grade evaluation: a fixed, paired scene set played in batches.

:class:`PairedEvaluator` plays the same scenes at every decision boundary: episode ``i`` of cell
``c`` is always reset with the seed ``base_seed + c * seed_stride + i``, so two boundaries (or two
runs) are compared on identical scenes and their difference is not sampling noise of the scenes.
All episodes (of every cell) run as one batch: one ``model.predict`` call per step for the
episodes still running, each on its own plain Gymnasium env (no VecEnv: its auto-reset would reseed
nothing and break the pairing). An optional stochastic pass replays the same scenes with the
stochastic policy under a fixed torch seed, inside :func:`torch.random.fork_rng`, so it is paired
too and leaves the training RNG streams untouched.

Per episode it reads the return, the length, success (``info[success_key]`` at the end), the cost
(the sum of ``info[cost_key]``, else ``info[episode_cost_key]`` at the end), a violation
(cost > 0; a non-finite cost counts as one) and safe success (``info[safe_success_key]`` at the
end where the env reports it, else success without violation). Rates carry 95% Wilson intervals.

Use at a boundary::

    evaluator = PairedEvaluator.for_difficulties(
        {"easy": "rl_manager/PaperReacherEasy-v0", "hard": "rl_manager/PaperReacherHard-v0"},
        n_per_cell=50, base_seed=1_000_000, stochastic=True)
    metrics = evaluator.evaluate(model)   # an EvalMetrics with paired=True
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th

from rl_manager.schema import EvalCell, EvalMetrics, RateInterval

#: builds one evaluation env
EnvFactory = Callable[[], gym.Env]

#: seed distance between cells (a cell may hold at most this many episodes)
DEFAULT_SEED_STRIDE = 100_000


def wilson_interval(k: int, n: int, z: float = 1.96) -> RateInterval:
    """Wilson score interval of a rate of ``k`` successes in ``n`` trials.

    :param k: number of successes, ``0 <= k <= n``.
    :param n: number of trials; ``n == 0`` gives the uninformative interval ``[0, 1]``.
    :param z: standard-normal quantile (1.96 for 95%).
    :raises ValueError: for ``k`` outside ``[0, n]``, a negative ``n`` or a non-positive ``z``.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be finite and > 0, got {z}")
    if n == 0:
        return RateInterval(low=0.0, high=1.0)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return RateInterval(low=max(0.0, centre - half), high=min(1.0, centre + half))


@dataclass(frozen=True)
class CellSpec:
    """One cell of the scene set.

    :param name: cell name (a difficulty, ``"all"``...).
    :param env: an env id for :func:`gymnasium.make` or a factory returning a fresh env.
    :param n_episodes: episodes (scenes) of the cell, ``1 <= n_episodes <= seed_stride``.
    :param env_kwargs: keyword arguments of :func:`gymnasium.make` (env ids only).
    :param reset_options: ``options`` passed to every ``reset`` (e.g. ``{"difficulty": "hard"}``).
    """

    name: str
    env: str | EnvFactory
    n_episodes: int
    env_kwargs: dict[str, Any] | None = None
    reset_options: dict[str, Any] | None = None

    def make(self) -> gym.Env:
        """Build one env of this cell."""
        if isinstance(self.env, str):
            return gym.make(self.env, **(self.env_kwargs or {}))
        if self.env_kwargs:
            raise ValueError(f"cell {self.name!r}: env_kwargs apply to env ids, not factories")
        return self.env()


@dataclass
class EpisodeResults:
    """Per-episode results of one cell and pass, in seed order.

    ``successes``/``costs``/``safe`` are ``None`` when the env never reported the key.
    """

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[bool] | None = None
    costs: list[float] | None = None
    safe: list[bool] | None = None

    @property
    def violations(self) -> list[bool] | None:
        """Episodes with a positive (or non-finite) cost."""
        return None if self.costs is None else [not c <= 0 for c in self.costs]

    @property
    def safe_successes(self) -> list[bool] | None:
        """Safe successes: the env's flag where reported, else success without violation."""
        if self.safe is not None:
            return self.safe
        if self.successes is None or self.costs is None:
            return None
        return [s and not v for s, v in zip(self.successes, self.violations or [], strict=True)]

    def extend(self, other: EpisodeResults) -> EpisodeResults:
        """Concatenate two result sets (a key missing from either is missing from both)."""

        def cat(a, b):
            return None if a is None or b is None else [*a, *b]

        return EpisodeResults(
            returns=[*self.returns, *other.returns],
            lengths=[*self.lengths, *other.lengths],
            successes=cat(self.successes, other.successes),
            costs=cat(self.costs, other.costs),
            safe=cat(self.safe, other.safe),
        )

    def cell(self, name: str) -> EvalCell:
        """Aggregate into an :class:`~rl_manager.schema.EvalCell` (``None`` figures when empty)."""
        return EvalCell(
            name=name,
            n_episodes=len(self.returns),
            mean_return=_mean(self.returns),
            success_rate=_rate(self.successes),
            safe_success_rate=_rate(self.safe_successes),
            violation_rate=_rate(self.violations),
            mean_cost=_mean(self.costs),
        )

    def metrics(self) -> EvalMetrics:
        """Aggregate into :class:`~rl_manager.schema.EvalMetrics` with Wilson intervals (``paired=False``)."""
        n = len(self.returns)
        return EvalMetrics(
            n_episodes=n,
            mean_return=_mean(self.returns),
            std_return=float(np.std(self.returns)) if n else None,
            success_rate=_rate(self.successes),
            mean_cost=_mean(self.costs),
            violation_rate=_rate(self.violations),
            safe_success_rate=_rate(self.safe_successes),
            mean_ep_length=_mean([float(x) for x in self.lengths]),
            success_ci=_ci(self.successes),
            safe_success_ci=_ci(self.safe_successes),
            violation_ci=_ci(self.violations),
        )


def _mean(values: Sequence[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


def _rate(flags: Sequence[bool] | None) -> float | None:
    return float(np.mean(flags)) if flags else None


def _ci(flags: Sequence[bool] | None) -> RateInterval | None:
    return wilson_interval(int(sum(flags)), len(flags)) if flags else None


def _stack(observations: list[Any]) -> Any:
    if isinstance(observations[0], dict):
        return {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    return np.stack(observations)


class PairedEvaluator:
    """Plays a fixed scene set in batches: the same seeds at every call.

    :param cells: the cells (:class:`CellSpec`, or ``(name, env id or factory, n_episodes)`` tuples).
    :param base_seed: seed of episode 0 of the first cell; use different bases (far apart) for the
        boundary scene set and the held-out one, both far from the training seeds.
    :param stochastic: also play the scenes with the stochastic policy (the ``stochastic`` cell).
    :param stochastic_seed: torch/numpy seed of the stochastic pass (default: ``base_seed``).
    :param success_key: ``info`` key meaning success.
    :param cost_key: ``info`` key with the per-step cost.
    :param episode_cost_key: ``info`` key with the episode cost so far (used without ``cost_key``).
    :param safe_success_key: ``info`` key with the env's own safe-success flag.
    :param max_episode_steps: a safety cap for envs without a time limit (episodes cut there count
        as truncated).
    :param seed_stride: seed distance between cells.
    :raises ValueError: for no cells, duplicate names, or a cell size outside ``[1, seed_stride]``.
    """

    def __init__(
        self,
        cells: Sequence[CellSpec | tuple[str, str | EnvFactory, int]],
        base_seed: int,
        *,
        stochastic: bool = False,
        stochastic_seed: int | None = None,
        success_key: str = "is_success",
        cost_key: str = "cost",
        episode_cost_key: str = "episode_cost",
        safe_success_key: str = "safe_success",
        max_episode_steps: int = 10_000,
        seed_stride: int = DEFAULT_SEED_STRIDE,
    ) -> None:
        self.cells = [c if isinstance(c, CellSpec) else CellSpec(*c) for c in cells]
        if not self.cells:
            raise ValueError("PairedEvaluator needs at least one cell")
        names = [c.name for c in self.cells]
        if len(set(names)) != len(names):
            raise ValueError(f"cell names must be unique, got {names}")
        for c in self.cells:
            if not 1 <= c.n_episodes <= seed_stride:
                raise ValueError(f"cell {c.name!r}: n_episodes must be in [1, {seed_stride}], got {c.n_episodes}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.base_seed = int(base_seed)
        self.stochastic = stochastic
        self.stochastic_seed = self.base_seed if stochastic_seed is None else int(stochastic_seed)
        self.success_key, self.cost_key = success_key, cost_key
        self.episode_cost_key, self.safe_success_key = episode_cost_key, safe_success_key
        self.max_episode_steps = max_episode_steps
        self.seed_stride = seed_stride
        self._envs: dict[str, list[gym.Env]] = {}
        #: per-episode results of the latest :meth:`evaluate` (deterministic pass, one per cell, seed
        #: order): what a per-episode paired test (e.g. McNemar) between two boundaries needs
        self.last_results: list[EpisodeResults] | None = None

    @classmethod
    def for_difficulties(
        cls,
        env_ids: dict[str, str],
        n_per_cell: int,
        base_seed: int,
        env_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> PairedEvaluator:
        """One cell per difficulty, e.g. the held-out set ``{"easy": ..., "medium": ..., "hard": ...}``
        with 240 episodes each.

        :param env_ids: env id by cell name.
        :param n_per_cell: episodes per cell.
        :param base_seed: seed of episode 0 of the first cell.
        :param env_kwargs: keyword arguments of :func:`gymnasium.make`, the same for every cell.
        :param kwargs: further :class:`PairedEvaluator` arguments.
        """
        cells = [CellSpec(name, env_id, n_per_cell, env_kwargs=env_kwargs) for name, env_id in env_ids.items()]
        return cls(cells, base_seed, **kwargs)

    @property
    def n_episodes(self) -> int:
        """Episodes per pass over all cells."""
        return sum(c.n_episodes for c in self.cells)

    def seeds(self, cell_index: int) -> list[int]:
        """The reset seeds of a cell's episodes."""
        start = self.base_seed + cell_index * self.seed_stride
        return list(range(start, start + self.cells[cell_index].n_episodes))

    def envs(self, cell: CellSpec) -> list[gym.Env]:
        """The cell's envs (one per episode), built on first use and kept."""
        if cell.name not in self._envs:
            self._envs[cell.name] = [cell.make() for _ in range(cell.n_episodes)]
        return self._envs[cell.name]

    def env_method(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``method`` on every built env that has it (e.g. ``set_reward_weights``)."""
        for envs in self._envs.values():
            for env in envs:
                fn = getattr(env.unwrapped, method, None)
                if callable(fn):
                    fn(*args, **kwargs)

    def close(self) -> None:
        """Close every env."""
        for envs in self._envs.values():
            for env in envs:
                env.close()
        self._envs.clear()

    # ------------------------------------------------------------------------------------ play
    def play_batch(self, model: Any, cell_indices: Sequence[int], deterministic: bool = True) -> list[EpisodeResults]:
        """Play every episode of the given cells as one batch (the caller handles RNG isolation).

        Each step makes one ``predict`` call on the stacked observations of the episodes still
        running and steps each of their envs; an episode ends at ``terminated`` or ``truncated``.

        :param model: anything with SB3's ``predict(obs, deterministic=...)``; observations are
            normalised with ``model.get_vec_normalize_env()`` when it has one.
        :param cell_indices: indices of the cells to play.
        :param deterministic: deterministic actions.
        :return: per-episode results of each cell, in the order of ``cell_indices``.
        """
        envs: list[gym.Env] = []
        owner: list[int] = []  # position in cell_indices of each episode
        obs: list[Any] = []
        for pos, k in enumerate(cell_indices):
            cell = self.cells[k]
            for env, seed in zip(self.envs(cell), self.seeds(k), strict=True):
                first, _ = env.reset(seed=seed, options=cell.reset_options)
                envs.append(env)
                owner.append(pos)
                obs.append(first)
        n = len(envs)
        normalizer = model.get_vec_normalize_env() if hasattr(model, "get_vec_normalize_env") else None
        returns, lengths, costs = np.zeros(n), np.zeros(n, dtype=int), np.zeros(n)
        success, safe, episode_cost = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n)
        seen = {"success": False, "cost": False, "episode_cost": False, "safe": False}
        cost_key, cap = self.cost_key, self.max_episode_steps
        active = list(range(n))
        while active:
            batch = _stack([obs[i] for i in active])
            if normalizer is not None:
                batch = normalizer.normalize_obs(batch)
            actions, _ = model.predict(batch, deterministic=deterministic)
            still = []
            for j, i in enumerate(active):
                obs[i], reward, terminated, truncated, info = envs[i].step(actions[j])
                returns[i] += float(reward)
                lengths[i] += 1
                if cost_key in info:
                    seen["cost"] = True
                    costs[i] += float(info[cost_key])
                if not (terminated or truncated or lengths[i] >= cap):
                    still.append(i)
                    continue
                if self.success_key in info:
                    seen["success"] = True
                    success[i] = float(info[self.success_key]) > 0
                if self.safe_success_key in info:
                    seen["safe"] = True
                    safe[i] = float(info[self.safe_success_key]) > 0
                if self.episode_cost_key in info:
                    seen["episode_cost"] = True
                    episode_cost[i] = float(info[self.episode_cost_key])
            active = still
        cost_values = costs if seen["cost"] else episode_cost if seen["episode_cost"] else None
        out = []
        for pos in range(len(cell_indices)):
            idx = [i for i in range(n) if owner[i] == pos]
            out.append(
                EpisodeResults(
                    returns=returns[idx].tolist(),
                    lengths=lengths[idx].tolist(),
                    successes=success[idx].tolist() if seen["success"] else None,
                    costs=cost_values[idx].tolist() if cost_values is not None else None,
                    safe=safe[idx].tolist() if seen["safe"] else None,
                )
            )
        return out

    def play(self, model: Any, deterministic: bool = True) -> list[EpisodeResults]:
        """Play every cell in one batch; the global torch, numpy and ``random`` states are restored.

        A stochastic pass is seeded with :attr:`stochastic_seed` so it is repeatable.
        """
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = list(range(th.cuda.device_count())) if th.cuda.is_available() and th.cuda.is_initialized() else []
        try:
            with th.random.fork_rng(devices=devices):
                if not deterministic:
                    th.manual_seed(self.stochastic_seed)
                    np.random.seed(self.stochastic_seed % 2**32)
                    random.seed(self.stochastic_seed)
                return self.play_batch(model, range(len(self.cells)), deterministic)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def evaluate(self, model: Any) -> EvalMetrics:
        """The paired figures of ``model``: deterministic over all cells, per cell, and stochastic.

        :param model: an SB3 algorithm (or anything with its ``predict``).
        :return: :class:`~rl_manager.schema.EvalMetrics` with ``paired=True``.
        """
        training = getattr(getattr(model, "policy", None), "training", None)
        try:
            results = self.play(model, deterministic=True)
            stochastic = None
            if self.stochastic:
                stochastic = concat_results(self.play(model, deterministic=False)).cell("stochastic")
        finally:
            if training is not None:  # SB3's predict switches the policy to eval mode
                model.policy.set_training_mode(training)
        self.last_results = results
        metrics = concat_results(results).metrics()
        cells = [r.cell(c.name) for c, r in zip(self.cells, results, strict=True)]
        return metrics.model_copy(update={"paired": True, "cells": cells, "stochastic": stochastic})


def concat_results(results: list[EpisodeResults]) -> EpisodeResults:
    """The episodes of several cells as one :class:`EpisodeResults`."""
    out = EpisodeResults(successes=[], costs=[], safe=[])
    for r in results:
        out = out.extend(r)
    return out
