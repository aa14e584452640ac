#!/usr/bin/env bash
# Issue 17 item 3: PBT(4)/PB2(4) populations on PaperReacher (conservative and reckless starts), fresh
# seeds 50-54, the paper_reacher grid's protocol. One "lane" runs its list of populations one after
# another; two lanes ran side by side on this 2-core machine (each population ~1 core).
#   experiments/population_paper_reacher.sh SNAP OUTROOT LANE_SPEC...   (LANE_SPEC = sched:recipe:seed)
# SNAP: a `git archive` of the commit used (PYTHONPATH), OUTROOT: run folders (not committed).
set -u
SNAP=$1; OUT=$2; shift 2
export PYTHONPATH=$SNAP OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAY_ADDRESS=local
cd "$SNAP"
for spec in "$@"; do
  IFS=: read -r sched recipe seed <<<"$spec"
  dir=$OUT/${sched}4_${recipe}_s${seed}
  if [ -f "$dir/summary.json" ]; then echo "skip $dir"; continue; fi
  mkdir -p "$dir"
  echo "$(date -u +%FT%TZ) start $spec load $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -v -o "$dir/time.txt" nice -n 15 /work/main/.venv/bin/python -m rl_manager.population \
    --env PaperReacher --recipe "$recipe" --scheduler "$sched" --population 4 --seed "$seed" \
    -n 1024000 --eval-freq 20480 --eval-episodes 150 --heldout-episodes 240 --perturb-every 4 \
    -o "$dir" >"$dir/stdout.log" 2>"$dir/stderr.log"
  rc=$?
  echo "$(date -u +%FT%TZ) end $spec rc=$rc load $(cut -d' ' -f1-3 /proc/loadavg) $(tail -1 "$dir/stdout.log")"
done
