"""Packaging: the recipes ship in the wheel, the ``rl-manager`` console script, the mujoco pin."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from rl_manager.train import HYPERPARAMS_DIRS, recipe_file

ROOT = Path(__file__).resolve().parents[1]


def test_source_checkout_reads_experiments_hyperparams() -> None:
    assert HYPERPARAMS_DIRS[0].parent.name == "rl_manager"  # the package data first, as rl-zoo3 does
    assert recipe_file("ppo") == ROOT / "experiments" / "hyperparams" / "ppo.yml"


@pytest.mark.slow
def test_wheel_ships_recipes_and_console_script(tmp_path: Path) -> None:
    """Build a wheel of the working tree; a non-editable install finds the recipes in the package."""
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    with tarfile.open(tmp_path / "src.tar", "w") as tar:
        for f in files:
            if not f.startswith("experiments/results") and (ROOT / f).is_file():
                tar.add(ROOT / f, arcname=f)
    with tarfile.open(tmp_path / "src.tar") as tar:
        tar.extractall(src, filter="data")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rl_manager-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        z.extractall(tmp_path / "site")
    assert {f"rl_manager/hyperparams/{a}.yml" for a in ("ppo", "sac", "tqc")} <= set(names)
    assert "rl-manager = rl_manager.cli:main" in entry_points
    code = "from rl_manager.train import load_recipe, recipe_file; print(recipe_file('ppo'));"
    code += "print(load_recipe('ppo', 'rl_manager/PlanarReacher-v0', 'conservative', None)['n_envs'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines()[0] == str(tmp_path / "site" / "rl_manager" / "hyperparams" / "ppo.yml")


def test_fetch_resets_under_pinned_mujoco() -> None:
    """gymnasium-robotics 1.4.2 Fetch resets trip an assertion in set_joint_qpos under newer mujoco."""
    gym = pytest.importorskip("gymnasium")
    gymnasium_robotics = pytest.importorskip("gymnasium_robotics")
    gym.register_envs(gymnasium_robotics)
    env = gym.make("FetchReach-v4")
    try:
        for seed in range(3):
            obs, _ = env.reset(seed=seed)
            assert obs["observation"].shape[0] > 0
    finally:
        env.close()
