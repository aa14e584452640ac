#!/usr/bin/env bash
# Issue 17 item 3: the single-run arms (rule manager, fixed recipe) of the population comparison, on the
# seeds of the populations, with the paper_reacher grid's protocol, run one after another in one lane.
#   experiments/population_managed.sh SNAP OUTROOT SPEC...   (SPEC = manager:recipe:seed, manager rule|none)
# SNAP: a `git archive` of the commit used (PYTHONPATH), OUTROOT: run folders (not committed).
set -u
SNAP=$1; OUT=$2; shift 2
export PYTHONPATH=$SNAP OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$SNAP"
for spec in "$@"; do
  IFS=: read -r manager recipe seed <<<"$spec"
  name=$manager; [ "$manager" = none ] && name=fixed
  dir=$OUT/${name}_${recipe}_s${seed}
  if [ -f "$dir/summary.json" ]; then echo "skip $dir"; continue; fi
  rm -rf "$dir"; mkdir -p "$OUT"
  echo "$(date -u +%FT%TZ) start $spec load $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -v -o "$OUT/${name}_${recipe}_s${seed}.time.txt" nice -n 15 /work/main/.venv/bin/python -m rl_manager.train \
    --env PaperReacher --recipe "$recipe" --manager "$manager" --seed "$seed" -n 1024000 --eval-freq 20480 \
    --eval-episodes 150 --heldout-episodes 240 --run-dir "$dir" -v 0 >"$OUT/${name}_${recipe}_s${seed}.log" 2>&1
  rc=$?
  echo "$(date -u +%FT%TZ) end $spec rc=$rc load $(cut -d' ' -f1-3 /proc/loadavg)"
done
