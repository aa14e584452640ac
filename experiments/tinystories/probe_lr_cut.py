"""Dev probe of issue 15 (tinystories_v3): the overfitting recipe (lr 3e-3) for ``--cut-step`` steps, then a
new LR, optionally with new Adam moments or another beta2; prints train/val loss every 20 steps.

It asks whether an LR cut on the starting plateau gets the run off it (it did not, unless the optimiser's
moments were renewed). Short runs on dev seeds only::

    python experiments/tinystories/probe_lr_cut.py --seed 100 --cut-step 40 --new-lr 7.5e-4 --steps 160 [--reset]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_lm  # noqa: E402
from lm import eval_windows, evaluate_loss  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cut-step", type=int, required=True)
    p.add_argument("--new-lr", type=float, required=True)
    p.add_argument("--reset", action="store_true", help="clear the optimiser state (Adam's moments) at the cut")
    p.add_argument("--beta2", type=float, default=None, help="Adam beta2 from the cut on")
    known, rest = p.parse_known_args(argv)
    recipe = argparse.ArgumentParser()
    train_lm.add_recipe_args(recipe)
    args = recipe.parse_args(rest)
    corpus = train_lm._setup(args)
    model, opt, criterion = train_lm.build(args, corpus)
    vx, vy = eval_windows(corpus.val, args.context, args.eval_windows)
    gen = th.Generator().manual_seed(args.seed)
    window: list[th.Tensor] = []
    t0 = time.time()
    for step in range(1, args.steps + 1):
        if step == known.cut_step + 1:
            for g in opt.param_groups:
                g["lr"] = known.new_lr
                if known.beta2 is not None:
                    g["betas"] = (g["betas"][0], known.beta2)
            if known.reset:
                opt.state.clear()
        window.append(train_lm.train_step(model, opt, corpus, args, gen, criterion))
        if step % args.eval_freq == 0:
            train = th.stack(window).mean().item()
            window = []
            lr = opt.param_groups[0]["lr"]
            print(f"{step} train {train:.3f} val {evaluate_loss(model, vx, vy):.3f} lr {lr:g}", flush=True)
    print(f"wall {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
