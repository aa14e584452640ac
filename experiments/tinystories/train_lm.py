"""TinyStories overfitting experiment: a fixed (overfitting) recipe against the managed run, and a
throughput benchmark of the asynchronous manager.

Sub-commands::

    # one arm (baseline: the fixed recipe; managed: the same recipe under TorchManager)
    python experiments/tinystories/train_lm.py train --arm baseline --seed 0 --out experiments/results/tinystories
    python experiments/tinystories/train_lm.py train --arm managed --seed 0 --out experiments/results/tinystories
    # tokens/s with no manager, async manager, sync manager (decisions take 2-5 s), interleaved
    python experiments/tinystories/train_lm.py bench --out experiments/results/tinystories
    # table and plot of the arms found under --out
    python experiments/tinystories/train_lm.py summarize --out experiments/results/tinystories

The 5-seed grid of issue 15 (overfitting recipe, early stopping, tuned recipe, rule manager) is
``grid.py`` (many of these runs in parallel on one device) and ``summarize.py`` (tables and plot).

The data is read from ``--data`` (default: ``../shared/data/tinystories/tinystories_2mib.txt``
relative to the repository, when present); it is never copied.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch as th
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lm import CharTransformer, Corpus, eval_windows, evaluate_loss, load_corpus, random_batch  # noqa: E402

from rl_manager.managers.base import Manager, Proposal  # noqa: E402
from rl_manager.managers.rule import RuleManager  # noqa: E402
from rl_manager.menu import GateConfig  # noqa: E402
from rl_manager.schema import ActionSpace, TelemetrySnapshot  # noqa: E402
from rl_manager.supervised import TorchManager, default_knobs, label_smoothing_knob  # noqa: E402

logger = logging.getLogger("tinystories")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinystories" / "tinystories_2mib.txt"


class SlowManager(Manager):
    """Wraps a manager and sleeps ``low``-``high`` seconds per decision (a slow LLM endpoint)."""

    def __init__(self, inner: Manager, low: float = 2.0, high: float = 5.0, seed: int = 0) -> None:
        self.inner, self.low, self.high = inner, low, high
        self.name = f"slow_{inner.name}"
        self._rng = random.Random(seed)

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        time.sleep(self._rng.uniform(self.low, self.high))
        return self.inner._propose(snapshot, menu, feedback)


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The baseline recipe (both arms start from it)."""
    p.add_argument("--data", default=str(DEFAULT_DATA), help="plain-text file of stories")
    p.add_argument("--train-fraction", type=float, default=0.02, help="fraction of the training stories used")
    p.add_argument("--tokenizer", choices=["word", "char"], default="word", help="built on the training split")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (recipe: 0)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout of every dropout module (recipe: 0)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="of the training loss (recipe: 0)")
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--eval-freq", type=int, default=20)
    p.add_argument("--eval-windows", type=int, default=128, help="fixed validation windows per evaluation")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda); batches are drawn on the CPU")
    p.add_argument("--out", default=str(REPO / "experiments" / "results" / "tinystories"))


def build(args: argparse.Namespace, corpus: Corpus) -> tuple[CharTransformer, th.optim.Optimizer, nn.CrossEntropyLoss]:
    """Model, optimiser and training criterion of the recipe (defaults: the overfitting recipe a user
    would plausibly start with: no dropout, no weight decay, no label smoothing, a high LR)."""
    th.manual_seed(args.seed)
    dropout = getattr(args, "dropout", 0.0)
    model = CharTransformer(len(corpus.vocab), args.context, args.width, args.layers, args.heads, dropout=dropout)
    model.to(getattr(args, "device", "cpu"))
    opt = th.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=getattr(args, "weight_decay", 0.0))
    criterion = nn.CrossEntropyLoss(label_smoothing=getattr(args, "label_smoothing", 0.0))
    return model, opt, criterion


def train_step(
    model: CharTransformer,
    opt: th.optim.Optimizer,
    corpus: Corpus,
    args,
    gen: th.Generator,
    criterion: nn.CrossEntropyLoss | None = None,
) -> float:
    """One optimisation step on a batch drawn with ``gen`` (on the CPU, so the batch order is the same on
    every device); returns the batch's plain cross-entropy (without label smoothing) as a detached
    tensor on the device (no synchronisation per step)."""
    x, y = random_batch(corpus.train, args.batch_size, args.context, gen)
    device = getattr(args, "device", "cpu")
    x, y = x.to(device), y.to(device)
    logits = model(x).flatten(0, 1)
    loss = (criterion or F.cross_entropy)(logits, y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if criterion is not None and criterion.label_smoothing > 0:
        with th.no_grad():
            return F.cross_entropy(logits, y.flatten())
    return loss.detach()


# ---------------------------------------------------------------------------------------------- train
def _setup(args: argparse.Namespace):
    """Set the torch threads and load the corpus as the command line asks."""
    th.set_num_threads(args.threads)
    return load_corpus(
        args.data,
        val_fraction=args.val_fraction,
        train_fraction=args.train_fraction,
        seed=args.split_seed,
        tokenizer=args.tokenizer,
    )


def manager_gates(args: argparse.Namespace) -> GateConfig | None:
    """The managed arm's gates: the library defaults unless ``--rollback-margin`` is given."""
    margin = getattr(args, "rollback_margin", None)
    return None if margin is None else GateConfig(rollback_margin=margin)


def _values(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(v) for v in text.split(","))


def managed_knobs(args: argparse.Namespace, opt, model, criterion) -> list:
    """LR, dropout, weight decay (:func:`default_knobs`) and label smoothing; ``--*-values`` replace the
    listed values of the regularisation knobs."""
    from rl_manager.supervised import dropout_knob, lr_knob, weight_decay_knob

    knobs = [lr_knob(opt)]
    dropout, wd = _values(args.dropout_values), _values(args.wd_values)
    knobs.append(dropout_knob(model, **({"values": dropout} if dropout else {})))
    knobs.append(weight_decay_knob(opt, **({"values": wd} if wd else {})))
    if args.smoothing_knob:
        ls = _values(args.ls_values)
        knobs.append(label_smoothing_knob(criterion, **({"values": ls} if ls else {})))
    assert [k.name for k in knobs[:3]] == [k.name for k in default_knobs(opt, model)]
    if getattr(args, "restart_knob", False):
        from rl_manager.supervised import optimizer_restart_knob

        knobs.append(optimizer_restart_knob(opt))
    return knobs


#: tinystories_v4 candidates (supervised_rule.OnsetAnnealRuleManager), chosen between on the dev seeds
V4 = ("proposed_v4_anneal", "proposed_v4_plateaureg", "proposed_v4_both")


def make_rule_manager(name: str) -> Manager:
    """``rule``: the library's rule manager; ``proposed*``: the versions of
    :mod:`rl_manager.managers.supervised_rule` (v4's ``proposed_v4_both`` is its ``SupervisedRuleManager``); ``llm``:
    :class:`~rl_manager.managers.LLMManager` on the ``RL_MANAGER_*`` endpoint (the library's rules as fallback)."""
    if name == "llm":
        from rl_manager.managers import LLMManager

        return LLMManager()
    if name == "proposed":
        from rl_manager.managers.supervised_rule import RegularizeFirstRuleManager

        return RegularizeFirstRuleManager()
    if name == "proposed_bold":
        from rl_manager.managers.supervised_rule import BoldRegularizeRuleManager

        return BoldRegularizeRuleManager()
    if name == "proposed_v3":
        from rl_manager.managers.supervised_rule import EarlySignalsRuleManager

        return EarlySignalsRuleManager()
    if name.startswith("proposed_v4"):
        from rl_manager.managers.supervised_rule import OnsetAnnealRuleManager

        anneal = None if name == "proposed_v4_plateaureg" else 0.5
        dropout = 0.3 if name in ("proposed_v4_plateaureg", "proposed_v4_both") else None
        return OnsetAnnealRuleManager(onset_lr_factor=anneal, plateau_dropout=dropout)
    return RuleManager()


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    corpus = _setup(args)
    model, opt, criterion = build(args, corpus)
    vx, vy = eval_windows(corpus.val, args.context, args.eval_windows)
    vx, vy = vx.to(args.device), vy.to(args.device)
    run_dir = Path(args.out) / f"{args.name or args.arm}_s{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    tm = None
    if args.arm == "managed":
        tm = TorchManager(
            opt,
            model,
            make_rule_manager(args.manager),
            run_dir=run_dir,
            knobs=managed_knobs(args, opt, model, criterion),
            total_steps=args.steps,
            task="tinystories-word",
            async_=not args.sync,
            gates=manager_gates(args),
        )
    gen = th.Generator().manual_seed(args.seed)
    curve: list[dict[str, Any]] = []
    window: list[float] = []
    start = time.perf_counter()
    logger.info(
        "%s: %d params, %d train tokens (%d stories), %d val tokens (%d stories), vocab %d",
        args.arm,
        model.n_params(),
        len(corpus.train),
        corpus.n_train_stories,
        len(corpus.val),
        corpus.n_val_stories,
        len(corpus.vocab),
    )

    def knob_values() -> dict[str, float]:
        if tm is not None:
            return tm.knob_values()
        return {
            "learning_rate": opt.param_groups[0]["lr"],
            "weight_decay": opt.param_groups[0]["weight_decay"],
            "dropout": model.drop.p,
            "label_smoothing": criterion.label_smoothing,
        }

    step = 0
    last = args.steps if getattr(args, "halt_at", None) is None else min(args.steps, args.halt_at)
    for step in range(1, last + 1):
        loss = train_step(model, opt, corpus, args, gen, criterion)
        window.append(loss)
        val = train = None
        if step % args.eval_freq == 0:
            val = evaluate_loss(model, vx, vy)
            train = th.stack(window).mean().item()  # the only synchronisation between evaluations
            knobs = knob_values()
            curve.append(
                {
                    "step": step,
                    "time_s": time.perf_counter() - start,
                    "train_loss": train,
                    "val_loss": val,
                    "knobs": knobs,
                }
            )
            window = []
            logger.info("%s step %d train %.3f val %.3f %s", args.arm, step, train, val, knobs)
        # the manager sees the mean training loss of the evaluation interval at each boundary
        if tm is not None and not tm.report(step, train_loss=train, val_loss=val):
            break
    summary = tm.close() if tm is not None else {}
    vals = [c["val_loss"] for c in curve]
    result = {
        "arm": args.name or args.arm,
        "kind": args.arm,
        "seed": args.seed,
        "params": model.n_params(),
        "train_tokens": len(corpus.train),
        "train_stories": corpus.n_train_stories,
        "val_tokens": len(corpus.val),
        "val_stories": corpus.n_val_stories,
        "steps": step,
        "halted_at": getattr(args, "halt_at", None),
        "epochs": step * args.batch_size * args.context / len(corpus.train),
        "val_unk_fraction": float((corpus.val == 0).float().mean()),
        "vocab": len(corpus.vocab),
        "wall_s": time.perf_counter() - start,
        "best_val_loss": min(vals),
        "best_step": curve[vals.index(min(vals))]["step"],
        "final_val_loss": vals[-1],
        "final_train_loss": curve[-1]["train_loss"],
        "interventions": summary.get("interventions", []),
        "manager_summary": {k: v for k, v in summary.items() if k != "interventions"},
        "curve": curve,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("arm", "best_val_loss", "final_val_loss", "steps", "wall_s")}))
    return result


# ---------------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved segments of ``none`` / ``async`` / ``sync`` training; tokens/s of each."""
    corpus = _setup(args)
    vx, vy = eval_windows(corpus.val, args.context, args.eval_windows)
    vx, vy = vx.to(args.device), vy.to(args.device)
    arms = ["none", "async", "sync"]
    setups = {}
    for arm in arms:
        model, opt, _ = build(args, corpus)
        setups[arm] = (model, opt, th.Generator().manual_seed(args.seed))
    totals = {arm: {"tokens": 0, "seconds": 0.0, "train_seconds": 0.0} for arm in arms}
    rounds: list[dict[str, float]] = []
    out = Path(args.out) / "bench"
    tokens_per_step = args.batch_size * args.context
    for r in range(args.rounds):
        order = arms[r % 3 :] + arms[: r % 3]
        row: dict[str, float] = {}
        for arm in order:
            model, opt, gen = setups[arm]
            tm = None
            if arm != "none":
                slow = SlowManager(RuleManager(), args.decision_low, args.decision_high, seed=r)
                tm = TorchManager(
                    opt,
                    model,
                    slow,
                    run_dir=out / f"{arm}_r{r}",
                    async_=arm == "async",
                    fallback=None,
                    total_steps=args.segment_steps,
                )
            t0 = time.perf_counter()
            for step in range(1, args.segment_steps + 1):
                loss = train_step(model, opt, corpus, args, gen).item()  # every arm reads its loss each step
                val = evaluate_loss(model, vx, vy) if step % args.eval_freq == 0 else None
                if tm is not None:
                    tm.report(step, train_loss=loss, val_loss=val)
            seconds = time.perf_counter() - t0
            if tm is not None:
                tm.close()
            tokens = args.segment_steps * tokens_per_step
            totals[arm]["tokens"] += tokens
            totals[arm]["seconds"] += seconds
            row[arm] = tokens / seconds
            logger.info("round %d %s: %.0f tokens/s (%.1f s)", r, arm, row[arm], seconds)
        rounds.append(row)
    tps = {arm: totals[arm]["tokens"] / totals[arm]["seconds"] for arm in arms}
    result = {
        "tokens_per_s": tps,
        "ratio_async_vs_none": tps["async"] / tps["none"],
        "ratio_sync_vs_none": tps["sync"] / tps["none"],
        "per_round_ratio_async_vs_none": [row["async"] / row["none"] for row in rounds],
        "per_round_ratio_sync_vs_none": [row["sync"] / row["none"] for row in rounds],
        "rounds": rounds,
        "segment_steps": args.segment_steps,
        "eval_freq": args.eval_freq,
        "decision_s": [args.decision_low, args.decision_high],
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "ratio_async_vs_none", "ratio_sync_vs_none")}))
    return result


# ---------------------------------------------------------------------------------------------- summarize
def cmd_summarize(args: argparse.Namespace) -> None:
    """Print a markdown table of every ``result.json`` under ``--out`` and plot validation loss per arm."""
    out = Path(args.out)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*_s*/result.json"))]
    if not results:
        raise SystemExit(f"no result.json under {out}")
    by_seed: dict[int, dict[str, dict]] = {}
    for r in results:
        by_seed.setdefault(r["seed"], {})[r["arm"]] = r
    print("| seed | arm | best val loss (step) | final val loss | final train loss | steps | wall s | interventions |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, arms in sorted(by_seed.items()):
        for arm, r in sorted(arms.items()):
            iv = "; ".join(
                f"step {i['step']}: {i['action']} "
                + ", ".join(f"{c['knob']} {c['before']:.3g}->{c['after']:.3g}" for c in i["changes"])
                for i in r["interventions"]
            )
            print(
                f"| {seed} | {arm} | {r['best_val_loss']:.4f} ({r['best_step']}) | {r['final_val_loss']:.4f} | "
                f"{r['final_train_loss']:.4f} | {r['steps']} | {r['wall_s']:.0f} | {iv or '-'} |"
            )
        if {"baseline", "managed"} <= arms.keys():
            b, m = arms["baseline"], arms["managed"]
            for key in ("final_val_loss", "best_val_loss"):
                red = 100 * (b[key] - m[key]) / b[key]
                print(f"\nseed {seed}: {key} reduction managed vs baseline: {red:.1f}%")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {"baseline": "tab:red", "managed": "tab:blue"}
    for r in results:
        steps = [c["step"] for c in r["curve"]]
        c = colors.get(r["arm"], None)
        ax.plot(steps, [x["val_loss"] for x in r["curve"]], color=c, label=f"{r['arm']} val (seed {r['seed']})")
        ax.plot(steps, [x["train_loss"] for x in r["curve"]], color=c, ls=":", alpha=0.6, label=f"{r['arm']} train")
        for i in r["interventions"]:
            y = next((x["val_loss"] for x in r["curve"] if x["step"] >= i["step"]), r["curve"][-1]["val_loss"])
            marker = "v" if i["action"].startswith("rollback") else "o"
            ax.plot([i["step"]], [y], marker=marker, color="k", ms=7)
            ax.annotate(
                i["action"].replace("rollback_and_consolidate", "rollback+").replace("rollback_to_best", "rollback"),
                (i["step"], y),
                textcoords="offset points",
                xytext=(3, 6),
                fontsize=7,
            )
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("TinyStories LM: validation loss per arm (markers: manager interventions)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(args.plot)
    fig.savefig(png, dpi=120)
    print(f"\nplot: {png}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="run one arm")
    add_recipe_args(p_train)
    p_train.add_argument(
        "--arm",
        choices=["baseline", "fixed", "managed"],
        required=True,
        help="fixed (= baseline): the recipe as given, no manager; managed: the recipe under TorchManager('rule')",
    )
    p_train.add_argument("--name", default=None, help="arm name and run-folder prefix (default: --arm)")
    p_train.add_argument("--sync", action="store_true", help="managed: decide at the boundary (default: async)")
    p_train.add_argument(
        "--rollback-margin", type=float, default=None, help="managed: GateConfig.rollback_margin (default 0.10)"
    )
    p_train.add_argument(
        "--no-smoothing-knob", dest="smoothing_knob", action="store_false", help="managed: no label-smoothing knob"
    )
    p_train.add_argument(
        "--manager",
        choices=["rule", "proposed", "proposed_bold", "proposed_v3", *V4, "llm"],
        default="rule",
        help="managed: which rules",
    )
    p_train.add_argument(
        "--halt-at",
        type=int,
        default=None,
        help="end the run after this step (a partial dev run); the budget the manager sees stays --steps",
    )
    p_train.add_argument(
        "--restart-knob", action="store_true", help="managed: add the optimizer_restarts knob (clears Adam's moments)"
    )
    p_train.add_argument("--dropout-values", default=None, help="managed: listed dropout values, comma-separated")
    p_train.add_argument("--wd-values", default=None, help="managed: listed weight-decay values")
    p_train.add_argument("--ls-values", default=None, help="managed: listed label-smoothing values")
    p_train.set_defaults(func=cmd_train)
    p_bench = sub.add_parser("bench", help="throughput: no manager vs async vs sync (slow decisions)")
    add_recipe_args(p_bench)
    p_bench.add_argument("--rounds", type=int, default=3)
    p_bench.add_argument("--segment-steps", type=int, default=40)
    p_bench.add_argument("--decision-low", type=float, default=2.0)
    p_bench.add_argument("--decision-high", type=float, default=5.0)
    p_bench.set_defaults(func=cmd_bench, eval_freq=10)
    p_sum = sub.add_parser("summarize", help="table and plot of the arms under --out")
    p_sum.add_argument("--out", default=str(REPO / "experiments" / "results" / "tinystories"))
    p_sum.add_argument("--plot", default=str(Path(__file__).resolve().parent / "val_loss.png"))
    p_sum.set_defaults(func=cmd_summarize)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.func(args)


if __name__ == "__main__":
    main()
