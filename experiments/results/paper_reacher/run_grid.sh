#!/usr/bin/env bash
# Runs grid.yml on a 16-core machine without internet (the GPU is not used: PPO with 64x64 nets is
# CPU-bound), then packs the small run files. Usage: bash run_grid.sh OUT_DIR [TIME_LIMIT_S]
# Wheels of the missing packages may be pre-downloaded into .whl/ (installed offline if present).
set -uo pipefail
cd "$(dirname "$0")/../../.."
out=${1:?out dir}; limit=${2:-540}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  [ -e rl_manager/envs ] || ln -s ../envs rl_manager/envs   # what setuptools' package-dir does on install
fi
workers=$(nproc)   # before OMP_NUM_THREADS=1, which makes nproc print 1
export CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/res
timeout "$limit" python3 -m rl_manager.compare "${3:-experiments/results/paper_reacher/grid.yml}" -o /tmp/res/paper_reacher \
  --workers "$workers" 2>&1 | tail -n 100
mkdir -p "$out"
(cd /tmp/res && tar czf "$out/runs.tgz" --exclude='*.zip' --exclude='*.pkl' --exclude='tb' paper_reacher)
ls -la "$out"
