"""What a resumable checkpoint costs: ``save_last`` (atomic ``last_model.zip`` + replay buffer) per algorithm.

PPO with the PaperReacher ``tuned`` recipe (16 envs, [64, 64], ``SplitLRMlpPolicy``) and SAC on the
same task with a full replay buffer of ``--buffer`` transitions; the median of ``--repeats`` saves
(each file written to a temporary name, fsynced and renamed). Prints one JSON object::

    python experiments/fault_checkpoint_cost.py --buffer 100000 --out /tmp/checkpoint_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch as th
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env

    import rl_manager.envs  # noqa: F401
    import rl_manager.policies  # noqa: F401
    from rl_manager.callback import save_last

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--buffer", type=int, default=100_000, help="SAC replay-buffer transitions (filled)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    th.set_num_threads(1)
    env_id = "rl_manager/PaperReacher-v0"
    models = {
        "ppo": PPO(
            "SplitLRMlpPolicy",
            make_vec_env(env_id, n_envs=16),
            n_steps=128,
            batch_size=256,
            policy_kwargs={"net_arch": [64, 64], "critic_lr": 1e-3},
        ),
        "sac": SAC(
            "MlpPolicy", make_vec_env(env_id, n_envs=1), buffer_size=args.buffer, policy_kwargs={"net_arch": [64, 64]}
        ),
    }
    sac = models["sac"]
    buffer = sac.replay_buffer
    buffer.observations[:] = np.random.default_rng(0).standard_normal(buffer.observations.shape)
    buffer.pos, buffer.full = 0, True
    command = ["python", "experiments/fault_checkpoint_cost.py", *(sys.argv[1:] if argv is None else argv)]
    out: dict[str, object] = {"command": " ".join(command)}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                save_last(model, folder)
                times.append(time.perf_counter() - start)
            size = sum(f.stat().st_size for f in Path(folder).glob("last_*"))
            out[name] = {"median_s": round(statistics.median(times), 4), "bytes": size}
            for f in Path(folder).glob("last_*"):
                f.unlink()
    out["sac"]["buffer_transitions"] = args.buffer  # type: ignore[index]
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
