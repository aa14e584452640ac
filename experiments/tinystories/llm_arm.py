"""The LLM manager as a TinyStories arm (issue 15): a local ``llama-server`` and one managed run per seed.

The runs use the grid's managed-arm menu and gates (``grid.py``: restart knob, rollback margin 0.02, the coarse
listed values) with ``--manager llm``: the LLM decides at every evaluation (sync, the server gets the cores while
training waits), the library's rule manager is the fallback, probation as for every managed arm::

    RL_MANAGER_ADVICE=true python experiments/tinystories/llm_arm.py --model qwen2.5-coder-1.5b \\
        --seeds 20 21 22 --out experiments/results/tinystories_v4_llm --data PATH
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from grid import CANDIDATE_MENU

from rl_manager.llm_server import LlamaServer
from rl_manager.models import resolve_gguf

HERE = Path(__file__).resolve().parent
#: the candidates' managed menu and gates in ``grid.py``, decided at every evaluation
MANAGED_ARGS = ["--sync", *CANDIDATE_MENU]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="GGUF path or pulled model name")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None, help="TinyStories text file (train_lm.py's default otherwise)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server threads")
    p.add_argument("--name", default="llm", help="arm name (run folders <name>_s<seed>)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with LlamaServer(resolve_gguf(args.model), threads=args.threads, log_path=out / "llama_server.log") as server:
        env = {**os.environ, "RL_MANAGER_BASE_URL": server.base_url, "RL_MANAGER_MODEL": server.model}
        for seed in args.seeds:
            cmd = [sys.executable, str(HERE / "train_lm.py"), "train", "--arm", "managed", "--manager", "llm"]
            cmd += ["--name", args.name, "--seed", str(seed), "--out", str(out), *MANAGED_ARGS]
            cmd += ["--data", args.data] if args.data else []
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
