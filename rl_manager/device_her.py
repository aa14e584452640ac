"""SB3's HER replay buffer, sampled on the model's device (issue 16).

:class:`~stable_baselines3.her.HerReplayBuffer` samples every batch on the host: it scans the whole
``ep_length`` table for valid transitions, gathers observations with numpy, draws the "future" goals, calls
the env's ``compute_reward`` and copies the batch to the device. On FetchPickAndPlace with 16 envs and
batches of 4,096 that is ~6 ms per gradient step on the host (measured on the 2-core machine, a buffer of
40k transitions), more than a CUDA-graph replay of the gradient step itself.

:class:`DeviceHerReplayBuffer` keeps SB3's buffer as it is (``add``, saving, loading: the numpy arrays stay
the record) and mirrors it into device tensors, one row per ``add`` (copied without waiting on the device).
A batch is then drawn and relabelled there, with the same distribution as SB3's:

- a transition is drawn uniformly among those whose episode has ended (``ep_length > 0``): an index into the
  running count of valid transitions, rebuilt once per ended episode;
- the last ``her_ratio`` of the batch gets a new desired goal by the buffer's strategy (``future``: an
  achieved goal uniformly from the current step to the episode's end, inclusive; ``final``; ``episode``), and
  its reward recomputed; the rest keep their stored goal and reward; ``dones`` ignore timeouts, as SB3's;
- the reward is recomputed on the device for Gymnasium-Robotics' goal envs (``-(distance > threshold)`` or
  ``-distance``), after checking that formula against the env's own ``compute_reward`` on stored goals;
  any other env is asked through ``compute_reward`` as in SB3 (one host round trip per batch);
- a cost penalty (an env attribute ``cost_penalty``, as ``rl_manager/SafeFetch*`` has) is subtracted from
  relabelled rewards too, times each transition's ``info["cost"]``, which ``add`` keeps in ``costs`` (SB3's
  buffer drops infos unless ``copy_info_dict``, so its relabelled rewards carry no penalty). The penalty in
  force is read when an episode ends, with the threshold: a knob's new value reaches relabelled rewards
  within one episode.

Random numbers come from the buffer's own torch generator on the device (seeded from numpy's global generator
when the mirror is built), not numpy's: the same algorithm, another stream, and the policy's torch stream untouched.
A ``VecNormalize`` env's running statistics are applied to the batch on the device, after relabelling, as SB3
applies them in numpy (observations standardised and clipped, rewards scaled and clipped; the buffer keeps the
original ones). It falls back to SB3's own ``sample`` where the mirror cannot stand in: ``copy_info_dict=True``
(rewards that read infos).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize
from stable_baselines3.her import HerReplayBuffer
from stable_baselines3.her.goal_selection_strategy import GoalSelectionStrategy

logger = logging.getLogger(__name__)

#: pinned host slots a row passes through on its way to a CUDA mirror (reused round robin)
STAGING_SLOTS = 8
_MIRROR_KEYS = (
    "_mirror",
    "_cum",
    "_n_valid",
    "_pending",
    "_staging",
    "_slot",
    "_reward_fn",
    "_reward_key",
    "_penalty",
    "_generator",
)


class DeviceHerReplayBuffer(HerReplayBuffer):
    """:class:`~stable_baselines3.her.HerReplayBuffer` whose :meth:`sample` runs on the model's device.

    Takes the same arguments; :meth:`add` also copies the new row to the device mirror (built at the first
    :meth:`sample`, rebuilt after loading).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: each stored transition's ``info["cost"]`` (0 without one), for the cost penalty of relabelled rewards
        self.costs = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self._reset_mirror()

    def _reset_mirror(self) -> None:
        self._mirror: dict[str, Any] | None = None
        self._cum: th.Tensor | None = None  #: running count of valid transitions over (row, env), flattened
        self._n_valid = 0
        self._pending: list[tuple[np.ndarray, int]] = []  #: (rows, env) whose ep_length changed
        self._staging: list[dict[str, th.Tensor]] = []
        self._slot = 0
        self._reward_fn: Callable[[th.Tensor, th.Tensor], th.Tensor] | None = None
        self._reward_key: tuple[float, str] | None = None
        self._penalty = 0.0
        self._generator: th.Generator | None = None

    # -- pickling: the mirror is rebuilt from the numpy arrays, never saved ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in _MIRROR_KEYS:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "costs" not in state:  # pickled before the buffer kept costs
            self.costs = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self._reset_mirror()

    # -- keeping the mirror in step with SB3's arrays ------------------------------------------------------
    def add(  # type: ignore[override]
        self,
        obs: dict[str, np.ndarray],
        next_obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        row = self.pos
        if self._mirror is not None:  # a full buffer: SB3 is about to invalidate the episodes it overwrites
            for env_idx in np.flatnonzero(self.ep_length[row] > 0):
                end = self.ep_start[row, env_idx] + self.ep_length[row, env_idx]
                self._pending.append((np.arange(row, end) % self.buffer_size, int(env_idx)))
        self.costs[row] = [float(info.get("cost", 0.0)) for info in infos]
        super().add(obs, next_obs, action, reward, done, infos)
        if self._mirror is not None:
            self._upload_row(row)
            self._flush_pending()

    def _compute_episode_length(self, env_idx: int) -> None:
        start = int(self._current_ep_start[env_idx])
        super()._compute_episode_length(env_idx)
        end = self.pos if self.pos >= start else self.pos + self.buffer_size
        self._pending.append((np.arange(start, end) % self.buffer_size, env_idx))

    def truncate_last_trajectory(self) -> None:
        super().truncate_last_trajectory()
        self._reset_mirror()  # dones and timeouts changed in place: rebuild from the arrays

    def _rows(self, rows: int | slice) -> dict[str, np.ndarray]:
        """A row (all envs) or a slice of rows of everything a sample reads, as the mirror stores it."""
        out = {f"obs/{k}": v[rows] for k, v in self.observations.items()}
        out |= {f"next/{k}": v[rows] for k, v in self.next_observations.items()}
        out["actions"] = self.actions[rows]
        out["rewards"] = self.rewards[rows]
        out["costs"] = self.costs[rows]
        out["dones"] = (self.dones[rows] * (1 - self.timeouts[rows])).astype(np.float32)
        out["ep_start"] = self.ep_start[rows]
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def _build_mirror(self) -> None:
        filled = self.buffer_size if self.full else self.pos
        row = self._rows(0)
        mirror: dict[str, Any] = {
            k: th.zeros((self.buffer_size, *v.shape), dtype=th.from_numpy(v).dtype, device=self.device)
            for k, v in row.items()
        }
        for key, values in self._rows(slice(0, filled)).items():
            mirror[key][:filled] = th.as_tensor(values, device=self.device)
        mirror["ep_length"] = th.tensor(self.ep_length, device=self.device)  # a copy, kept by _flush_pending
        self._mirror, self._pending, self._cum = mirror, [], None
        # the buffer's own stream, seeded from numpy's (which SB3's set_random_seed seeds): its draws leave the
        # policy's torch stream as it would be with SB3's buffer
        self._generator = th.Generator(device=self.device)
        self._generator.manual_seed(int(np.random.randint(2**62)))
        if self.device.type == "cuda":
            self._staging = [
                {k: th.empty(v.shape, dtype=th.from_numpy(v).dtype).pin_memory() for k, v in row.items()}
                | {"_event": th.cuda.Event()}  # type: ignore[dict-item]
                for _ in range(STAGING_SLOTS)
            ]
        self._reward_fn = self._device_reward_fn()

    def _upload_row(self, row: int) -> None:
        assert self._mirror is not None
        values = self._rows(row)
        if not self._staging:  # CPU: a plain copy
            for key, value in values.items():
                self._mirror[key][row] = th.from_numpy(value)
            return
        slot = self._staging[self._slot]
        self._slot = (self._slot + 1) % len(self._staging)
        slot["_event"].synchronize()  # type: ignore[attr-defined]  (the slot's last copy is done: reuse it)
        for key, value in values.items():
            slot[key].copy_(th.from_numpy(value))
            self._mirror[key][row].copy_(slot[key], non_blocking=True)
        slot["_event"].record()  # type: ignore[attr-defined]

    def _flush_pending(self) -> None:
        assert self._mirror is not None
        if not self._pending:
            return
        for rows, env_idx in self._pending:
            index = th.as_tensor(rows, device=self.device)
            self._mirror["ep_length"][index, env_idx] = th.as_tensor(self.ep_length[rows, env_idx], device=self.device)
        self._pending, self._cum = [], None

    # -- the reward on the device --------------------------------------------------------------------------
    def _reward_attrs(self) -> tuple[float, str] | None:
        """The goal env's ``(distance_threshold, reward_type)``, or None if it has none."""
        if self.env is None or not all(self.env.has_attr(n) for n in ("distance_threshold", "reward_type")):
            return None
        get = self.env.get_attr
        return float(get("distance_threshold", indices=[0])[0]), str(get("reward_type", indices=[0])[0])

    def _device_reward_fn(self) -> Callable[[th.Tensor, th.Tensor], th.Tensor] | None:
        """Gymnasium-Robotics' goal reward, if the env uses it (checked on stored goals); else None."""
        self._reward_key = self._reward_attrs()
        if self._reward_key is None:
            return None
        threshold, reward_type = self._reward_key

        def reward(achieved: th.Tensor, desired: th.Tensor) -> th.Tensor:
            distance = th.linalg.vector_norm(achieved - desired, dim=-1)
            return -(distance > threshold).float() if reward_type == "sparse" else -distance.float()

        filled = self.buffer_size if self.full else self.pos
        rng = np.random.default_rng(0)
        rows = rng.integers(0, max(filled, 1), size=512)
        envs = rng.integers(0, self.n_envs, size=512)
        achieved = self.next_observations["achieved_goal"][rows, envs]
        # the stored goals, and goals of other transitions (as relabelling draws them)
        desired = np.concatenate([self.observations["desired_goal"][rows, envs], achieved[rng.permutation(512)]])
        achieved = np.concatenate([achieved, achieved])
        got = reward(th.as_tensor(achieved), th.as_tensor(desired)).numpy()
        if not np.array_equal(self._env_reward(achieved, desired), got):
            logger.warning("the env's compute_reward is not the goal-distance reward: relabelling on the host")
            return None
        return reward

    def _cost_penalty(self) -> float:
        """The env's ``cost_penalty`` attribute (0 without one)."""
        if self.env is None or not self.env.has_attr("cost_penalty"):
            return 0.0
        return float(self.env.get_attr("cost_penalty", indices=[0])[0])

    def _env_reward(self, achieved: np.ndarray, desired: np.ndarray) -> np.ndarray:
        """The env's own ``compute_reward`` (first env, no infos), as SB3 relabels."""
        assert self.env is not None
        rewards = self.env.env_method("compute_reward", achieved, desired, [{}] * len(achieved), indices=[0])[0]
        return np.asarray(rewards, dtype=np.float32)

    def _host_reward(self, achieved: th.Tensor, desired: th.Tensor) -> th.Tensor:
        rewards = self._env_reward(achieved.cpu().numpy(), desired.cpu().numpy())
        return th.as_tensor(rewards, device=self.device)

    # -- sampling ------------------------------------------------------------------------------------------
    def sample(self, batch_size: int, env: VecNormalize | None = None) -> DictReplayBufferSamples:  # type: ignore[override]
        if self.copy_info_dict:
            return super().sample(batch_size, env)
        batch = self._sample(batch_size)
        return batch if env is None else self._normalize(batch, env)

    def _normalize(self, batch: DictReplayBufferSamples, env: VecNormalize) -> DictReplayBufferSamples:
        """``batch`` under ``env``'s running statistics, as ``env.normalize_obs`` and ``normalize_reward`` do."""
        observations, next_observations, rewards = batch.observations, batch.next_observations, batch.rewards
        if env.norm_obs:
            stats: dict[str, tuple[th.Tensor, th.Tensor]] = {}  # (mean, std) on the device, for both dicts
            for key in env.norm_obs_keys:
                x, rms = observations[key], env.obs_rms[key]
                mean, std = (rms.mean, np.sqrt(rms.var + env.epsilon))
                stats[key] = (
                    th.as_tensor(mean, dtype=x.dtype, device=x.device),
                    th.as_tensor(std, dtype=x.dtype, device=x.device),
                )

            def scale(o: dict[str, th.Tensor]) -> dict[str, th.Tensor]:  # float32, as SB3's
                return {
                    k: th.clamp((v - stats[k][0]) / stats[k][1], -env.clip_obs, env.clip_obs).float()
                    if k in stats
                    else v
                    for k, v in o.items()
                }

            observations, next_observations = scale(observations), scale(next_observations)
        if env.norm_reward:
            scale_r = float(np.sqrt(env.ret_rms.var + env.epsilon))
            rewards = th.clamp(rewards / scale_r, -env.clip_reward, env.clip_reward)
        return batch._replace(observations=observations, next_observations=next_observations, rewards=rewards)

    def _sample(self, batch_size: int) -> DictReplayBufferSamples:
        """A batch of stored, relabelled transitions as they were added (no normalisation)."""
        if self._mirror is None:
            self._build_mirror()
        m = self._mirror
        assert m is not None
        if self._cum is None:
            self._cum = th.cumsum((m["ep_length"] > 0).flatten(), 0)
            self._n_valid = int(self._cum[-1])  # one host sync per ended episode
            if self._reward_fn is not None and self._reward_attrs() != self._reward_key:
                self._reward_fn = self._device_reward_fn()  # a setter changed the threshold: check again
            self._penalty = self._cost_penalty()
        if self._n_valid == 0:
            raise RuntimeError(
                "Unable to sample before the end of the first episode. We recommend choosing a value "
                "for learning_starts that is greater than the maximum number of timesteps in the environment."
            )
        rows, envs = self._draw_transitions(batch_size)
        obs = {key[4:]: m[key][rows, envs] for key in m if key.startswith("obs/")}
        next_obs = {key[5:]: m[key][rows, envs] for key in m if key.startswith("next/")}
        rewards = m["rewards"][rows, envs]

        n_real = batch_size - int(self.her_ratio * batch_size)  # SB3's split: the rest is relabelled
        v_rows, v_envs = rows[n_real:], envs[n_real:]
        start, length = m["ep_start"][v_rows, v_envs], m["ep_length"][v_rows, v_envs]
        in_episode = self._draw_goal_steps((v_rows - start) % self.buffer_size, length)
        goals = m["next/achieved_goal"][(in_episode + start) % self.buffer_size, v_envs]
        obs["desired_goal"][n_real:] = goals
        next_obs["desired_goal"][n_real:] = goals
        relabel = self._reward_fn or self._host_reward
        rewards[n_real:] = relabel(next_obs["achieved_goal"][n_real:], goals)
        if self._penalty:
            rewards[n_real:] -= self._penalty * m["costs"][v_rows, v_envs]
        return DictReplayBufferSamples(
            observations=obs,
            actions=m["actions"][rows, envs],
            next_observations=next_obs,
            dones=m["dones"][rows, envs].reshape(-1, 1),
            rewards=rewards.reshape(-1, 1),
        )

    def _draw_transitions(self, batch_size: int) -> tuple[th.Tensor, th.Tensor]:
        """(row, env) of ``batch_size`` transitions drawn uniformly among those of ended episodes."""
        assert self._cum is not None
        k = th.randint(self._n_valid, (batch_size,), device=self.device, generator=self._generator)
        flat = th.searchsorted(self._cum, k, right=True)  # the k-th valid (row, env), in row-major order
        return flat // self.n_envs, flat % self.n_envs

    def _draw_goal_steps(self, current: th.Tensor, length: th.Tensor) -> th.Tensor:
        """The step (in its episode) whose achieved goal relabels each transition, by the buffer's strategy."""
        if self.goal_selection_strategy == GoalSelectionStrategy.FINAL:
            return length - 1
        if self.goal_selection_strategy == GoalSelectionStrategy.FUTURE:  # inclusive of the current step
            return current + self._uniform_below(length - current)
        if self.goal_selection_strategy == GoalSelectionStrategy.EPISODE:
            return self._uniform_below(length)
        raise ValueError(f"Strategy {self.goal_selection_strategy} for sampling goals not supported!")

    def _uniform_below(self, high: th.Tensor) -> th.Tensor:
        """An integer uniformly in ``[0, high)`` for each entry of ``high`` (all ``>= 1``)."""
        draw = th.rand(high.shape, dtype=th.float64, device=high.device, generator=self._generator)
        return th.minimum((draw * high).long(), high - 1)
