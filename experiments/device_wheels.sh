#!/usr/bin/env bash
# The packages the lent GPU machine lacks (it has torch, numpy, tensorboard, pyyaml, ... but no mujoco, gymnasium,
# gymnasium-robotics, SB3/sb3-contrib or pydantic), as cp312 wheels in .whl/ (ignored: add /.whl/ to
# .git/info/exclude) and gymnasium-robotics unpacked in .whl/pkgs/ without its Adroit and Kitchen assets (42 MB of
# meshes; the whole folder stays ~30 MB of the 64 MiB a call may carry). Versions: README "Pinned dependency set".
#   bash experiments/device_wheels.sh            # then run(..., carry=[".whl"]) with, first in its command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && cp -r .whl/pkgs/* /tmp/site/
# (experiments/device_grid.sh does that install itself.) Move experiments/results out of the tree for such a call:
# it alone is over 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl && cd .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d . \
  stable-baselines3==2.9.2 sb3-contrib==2.9.2 gymnasium==1.4.0 gymnasium-robotics==1.4.2 mujoco==3.11.0 \
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 typing-extensions==4.16.0 \
  typing-inspection==0.4.5 annotated-types==0.8.0 python-dotenv==1.2.4 farama-notifications==0.0.6 \
  pettingzoo==1.27.0 glfw==2.11.0 pyopengl==3.1.10
# gymnasium_robotics imports pettingzoo (its multi-agent envs) at package import; mujoco imports glfw and OpenGL
rm -rf pkgs && mkdir pkgs && python3 -m zipfile -e gymnasium_robotics-1.4.2-py3-none-any.whl pkgs
rm -rf gymnasium_robotics-1.4.2-py3-none-any.whl pkgs/gymnasium_robotics/envs/assets/{adroit_hand,kitchen_franka}
du -sh .
