#!/usr/bin/env bash
# Runs rl_manager.compare grids on a lent machine without internet, detached (grids outlast one call).
#   bash experiments/device_grid.sh start GRID.yml [GRID.yml ...]   # launch every grid at once, return
#   bash experiments/device_grid.sh poll OUT_DIR [WAIT_S]            # wait up to WAIT_S (default 540) for
#                                                                    # them; when all are done, pack each
#                                                                    # grid's small run files into OUT_DIR
#                                                                    # (PACK=1: pack what is there, done or not)
# Missing packages travel in .whl/ (wheels, installed offline) and .whl/pkgs/ (unpacked packages, e.g. a
# gymnasium_robotics trimmed to the Fetch assets); WHL names another folder (e.g. when this script runs
# from a snapshot of the source under .whl/, so that uncommitted edits in the checkout do not travel into
# the runs). Each grid gets every core: the OS shares them out (WORKERS=N sets a grid's worker count).
# The runs execute from a copy under /tmp/grid: every call that carries .whl replaces it on the machine,
# which would pull the source and packages from under runs still going (they died at their next import).
set -uo pipefail
whl=$(realpath "${WHL:-.whl}")
cd "$(dirname "$0")/.."
res=/tmp/res
if ls "$whl"/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$whl"/*.whl || exit 1
fi
if [ "$1" = start ] && [ ! -d /tmp/grid ]; then
  mkdir -p /tmp/grid && cp -r . /tmp/grid/src && { [ ! -d "$whl/pkgs" ] || cp -r "$whl/pkgs" /tmp/grid/pkgs; }
fi
[ -d /tmp/grid/src ] && cd /tmp/grid/src
export PYTHONPATH=/tmp/site:/tmp/grid/pkgs:$PWD
[ -e rl_manager/envs ] || ln -s ../envs rl_manager/envs   # what setuptools' package-dir does on install
case "${1:?start|poll}" in
  start)
    shift
    workers=${WORKERS:-$(nproc)}   # before OMP_NUM_THREADS=1, which makes nproc print 1
    export CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 MUJOCO_GL=disable
    mkdir -p "$res"
    for grid in "$@"; do
      name=$(basename "$(dirname "$grid")")
      # runs already committed next to the grid (links to another grid's runs included) are resumed: skipped
      [ -d "$(dirname "$grid")/runs" ] && mkdir -p "$res/$name" && cp -rL "$(dirname "$grid")/runs" "$res/$name/"
      setsid nohup bash -c "python3 -m rl_manager.compare '$grid' -o '$res/$name' --workers $workers \
        > '$res/$name.log' 2>&1; echo \$? > '$res/$name.done'" > /dev/null 2>&1 &
      echo "started $name ($workers workers)"
    done
    ;;
  poll)
    out=${2:?out dir}; wait_s=${3:-540}
    deadline=$((SECONDS + wait_s))
    while :; do
      pending=0
      for log in "$res"/*.log; do [ -e "${log%.log}.done" ] || pending=$((pending + 1)); done
      [ "$pending" -eq 0 ] || [ "$SECONDS" -ge "$deadline" ] && break
      sleep 10
    done
    for log in "$res"/*.log; do echo "== $log"; grep -c ": ok" "$log"; tail -n 5 "$log"; done
    if [ "$pending" -eq 0 ] || [ -n "${PACK:-}" ]; then
      mkdir -p "$out"
      for log in "$res"/*.log; do
        name=$(basename "${log%.log}")
        (cd "$res" && tar czf "$out/$name.tgz" --exclude='*.zip' --exclude='*.pkl' --exclude='tb' \
          --exclude='*.monitor.csv' "$name" "$name.log")
      done
      ls -la "$out"
      [ "$pending" -eq 0 ] || echo "$pending grid(s) still running (packed as they are)"
    else
      echo "$pending grid(s) still running"
    fi
    ;;
esac
