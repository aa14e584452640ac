"""Measure how often each Fetch cost term fires under random, scripted and noisy scripted policies.

Usage::

    python experiments/calibrate_costs.py --episodes 100 --seed 0
    python experiments/calibrate_costs.py --env rl_manager/SafeFetchReach-v0 --episodes 400 --seed 10000 \
        --noise --reach-floor 0.42 0.43 0.44 0.45   # the reach with the gripper held at z >= each floor (m)

For every task and policy it prints, per cost term, the fraction of episodes with at least one
violation and the fraction of steps in violation, plus percentiles of the raw signals (episode
maximum end-effector acceleration and robot–table contact force) used to pick the thresholds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import gymnasium as gym
import numpy as np

import rl_manager.envs  # noqa: F401  (registers the ids)
from rl_manager.envs.safety import FetchSafetyCost

Policy = Callable[[dict[str, np.ndarray], dict[str, float]], np.ndarray]


def random_policy(env: gym.Env) -> Policy:
    def act(obs: dict[str, np.ndarray], state: dict[str, float]) -> np.ndarray:
        return env.action_space.sample()

    return act


def _move(target: np.ndarray, grip: np.ndarray, gain: float = 10.0) -> np.ndarray:
    return np.clip(gain * (target - grip), -1.0, 1.0)


def scripted_reach(obs: dict[str, np.ndarray], state: dict[str, float]) -> np.ndarray:
    """Move the gripper straight to the goal (no lower than ``state["floor"]``, when given)."""
    target = obs["desired_goal"].copy()
    target[2] = max(target[2], state.get("floor", -np.inf))
    return np.append(_move(target, obs["observation"][:3]), 0.0)


def scripted_pick_and_place(obs: dict[str, np.ndarray], state: dict[str, float]) -> np.ndarray:
    """Hover over the object, descend, close the fingers, carry it to the goal."""
    o = obs["observation"]
    grip, obj, goal = o[:3], o[3:6], obs["desired_goal"]
    phase = state.setdefault("phase", 0.0)
    action = np.zeros(4)
    if phase == 0:  # above the object, fingers open
        target = obj + np.array([0.0, 0.0, 0.05])
        action[:3], action[3] = _move(target, grip), 1.0
        if np.linalg.norm(target - grip) < 0.01:
            state["phase"] = 1
    elif phase == 1:  # descend
        action[:3], action[3] = _move(obj, grip), 1.0
        if np.linalg.norm(obj - grip) < 0.01:
            state["phase"], state["t"] = 2, 0
    elif phase == 2:  # close
        action[3] = -1.0
        state["t"] += 1
        if state["t"] >= 4:
            state["phase"] = 3
    else:  # carry
        action[:3], action[3] = _move(goal, grip), -1.0
    return action


def scripted_push(obs: dict[str, np.ndarray], state: dict[str, float]) -> np.ndarray:
    """Go behind the object (relative to the goal), lower, push it towards the goal."""
    o = obs["observation"]
    grip, obj, goal = o[:3], o[3:6], obs["desired_goal"]
    direction = goal[:2] - obj[:2]
    direction /= max(np.linalg.norm(direction), 1e-6)
    behind = np.append(obj[:2] - 0.06 * direction, obj[2])
    phase = state.setdefault("phase", 0.0)
    if phase == 0:
        target = behind + np.array([0.0, 0.0, 0.1])
        if np.linalg.norm(target - grip) < 0.015:
            state["phase"] = 1
    elif phase == 1:
        target = behind
        if np.linalg.norm(target - grip) < 0.015:
            state["phase"] = 2
    else:
        target = np.append(goal[:2] - 0.03 * direction, obj[2])
    return np.append(_move(target, grip, gain=6.0), 0.0)


SCRIPTED: dict[str, Policy] = {
    "rl_manager/SafeFetchReach-v0": scripted_reach,
    "rl_manager/SafeFetchPush-v0": scripted_push,
    "rl_manager/SafeFetchPickAndPlace-v0": scripted_pick_and_place,
}


def run(
    env_id: str, policy_name: str, episodes: int, seed: int, noise: float, floor: float | None = None
) -> dict[str, float]:
    env = gym.make(env_id)
    env.action_space.seed(seed)
    wrapper = _find_cost_wrapper(env)
    rng = np.random.default_rng(seed)
    terms = wrapper.reported_terms
    ep_any = {t: 0 for t in terms}
    step_count = {t: 0.0 for t in terms}
    steps = successes = 0
    max_accel, max_force, ep_costs = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        state: dict[str, float] = {} if floor is None else {"floor": floor}
        fired = {t: False for t in terms}
        peak_a, peak_f = 0.0, 0.0
        done = False
        info: dict = {}
        while not done:
            if policy_name == "random":
                action = env.action_space.sample()
            else:
                action = SCRIPTED[env_id](obs, state)
                if noise > 0:
                    action = np.clip(action + rng.normal(0.0, noise, size=action.shape), -1.0, 1.0)
            obs, _, term, trunc, info = env.step(action.astype(np.float32))
            done = term or trunc
            steps += 1
            peak_a = max(peak_a, wrapper.last_ee_accel)
            peak_f = max(peak_f, wrapper.table_contact_force())
            for t in terms:
                step_count[t] += info[f"cost_{t}"]
                fired[t] |= info[f"cost_{t}"] > 0
        successes += int(info.get("is_success", 0.0) > 0)
        for t in terms:
            ep_any[t] += int(fired[t])
        max_accel.append(peak_a)
        max_force.append(peak_f)
        ep_costs.append(info["episode_cost"])
    env.close()
    out = {f"ep_rate_{t}": ep_any[t] / episodes for t in terms}
    out.update({f"step_rate_{t}": step_count[t] / steps for t in terms})
    out["success"] = successes / episodes
    out["mean_ep_cost"] = float(np.mean(ep_costs))
    out["accel_p50/p90/max"] = tuple(np.round(np.percentile(max_accel, [50, 90, 100]), 1))
    out["force_p50/p90/max"] = tuple(np.round(np.percentile(max_force, [50, 90, 100]), 1))
    return out


def _find_cost_wrapper(env: gym.Env) -> FetchSafetyCost:
    current = env
    while not isinstance(current, FetchSafetyCost):
        if not isinstance(current, gym.Wrapper):
            raise ValueError("no FetchSafetyCost in the wrapper stack")
        current = current.env
    return current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, nargs="*", default=[0.3, 1.0])
    parser.add_argument("--env", nargs="+", default=list(SCRIPTED))
    parser.add_argument(
        "--reach-floor", type=float, nargs="*", default=[], help="(Reach) also run the scripted reach held at z >= each"
    )
    args = parser.parse_args()
    for env_id in args.env:
        runs = [("random", 0.0, None), ("scripted", 0.0, None)] + [("scripted", n, None) for n in args.noise]
        if "Reach" in env_id:
            runs += [("scripted", 0.0, z) for z in args.reach_floor]
        for policy, noise, floor in runs:
            label = policy if noise == 0 else f"scripted+N(0,{noise})"
            label += "" if floor is None else f" z>={floor}"
            res = run(env_id, policy, args.episodes, args.seed, noise, floor)
            print(
                f"{env_id:40s} {label:22s} "
                + " ".join(f"{k}={v if isinstance(v, tuple) else round(v, 3)}" for k, v in res.items()),
                flush=True,
            )


if __name__ == "__main__":
    main()
