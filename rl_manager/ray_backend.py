"""Ray backend of :mod:`rl_manager.compare`: each (arm, seed) run is a Ray task.

``python -m rl_manager.compare GRID -o OUT --backend ray`` starts a local Ray instance (``--address``
joins an existing cluster; ``OUT`` must then be on a filesystem every node sees). A task runs the same
``python -m rl_manager.train`` process as the default process backend (:func:`rl_manager.compare.run_one`),
so both write the same run folders. A task whose worker dies (a node lost, a killed process) is
retried by Ray; the retry finds the run's ``config.yml`` and resumes it from its last checkpoint, or
from scratch when none was written yet. A training process that fails (non-zero exit) is reported,
not retried, as in the process backend.

Install with ``pip install "rl_manager[ray]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rl_manager.compare import Arm, Grid


def _run(grid: Grid, arm: Arm, seed: int, out: str) -> tuple[str, int, str]:
    from rl_manager.compare import run_one

    return run_one(grid, arm, seed, Path(out), kill_with_parent=True)


def run_grid_ray(
    grid: Grid,
    out: Path,
    *,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_retries: int = 3,
) -> list[tuple[str, int, str]]:
    """Run every (arm, seed) of ``grid`` as a Ray task.

    :param address: Ray cluster address (``None``: start a local instance).
    :param num_cpus: CPUs reserved per run (a run trains with one torch thread).
    :param num_gpus: GPUs reserved per run (fractions share one GPU).
    :param max_retries: retries of a run whose worker died.
    :return: (run id, exit status, status word) per run, as :func:`rl_manager.compare.run_grid`.
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the Ray backend needs the 'ray' extra: pip install 'rl_manager[ray]'") from exc

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)(_run)
        pending = {
            task.remote(grid, arm, seed, str(out.resolve())): f"{arm.name}/s{seed}"
            for seed in grid.seeds
            for arm in grid.arms
        }
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                rid = pending.pop(ref)
                try:
                    rid, code, status = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries exhausted
                    code, status = 1, f"failed in Ray ({type(exc).__name__}: {exc})"
                print(f"{rid}: {status}", flush=True)
                results.append((rid, code, status))
        return results
    finally:
        if started:
            ray.shutdown()
