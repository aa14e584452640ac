#!/usr/bin/env bash
# A worker of a shared queue of populations (the second phase of the issue 17 item 3 runs: the first
# PBT populations ran in two fixed lanes, population_paper_reacher.sh; the rest were queued so that
# PBT finished on both starts first and PB2 got seeds on both starts in turn).
#   experiments/population_queue.sh SNAP OUTROOT QUEUE [WAIT_PID WAIT_SPEC]
# QUEUE: a file of sched:recipe:seed lines, shared by the workers (taken under flock). WAIT_PID: the
# population command of a killed lane still running: wait for it and log its end first.
set -u
SNAP=$1; OUT=$2; QUEUE=$3; WAIT_PID=${4:-}; WAIT_SPEC=${5:-}
export PYTHONPATH=$SNAP OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAY_ADDRESS=local
cd "$SNAP"
SID=$(ps -o sid= -p $$ | tr -d ' ')
if [ -n "$WAIT_PID" ]; then
  while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 2; done
  echo "$(date -u +%FT%TZ) end $WAIT_SPEC rc=? (lane process, ended) load $(cut -d' ' -f1-3 /proc/loadavg)"
fi
while true; do
  spec=$(flock "$QUEUE.lock" bash -c 'head -1 "$0"; sed -i 1d "$0"' "$QUEUE")
  [ -z "$spec" ] && break
  IFS=: read -r sched recipe seed <<<"$spec"
  dir=$OUT/${sched}4_${recipe}_s${seed}
  if [ -f "$dir/summary.json" ]; then echo "skip $dir"; continue; fi
  rm -rf "$dir"; mkdir -p "$dir"
  echo "$(date -u +%FT%TZ) start $spec sid $SID load $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -v -o "$dir/time.txt" nice -n 15 /work/main/.venv/bin/python -m rl_manager.population \
    --env PaperReacher --recipe "$recipe" --scheduler "$sched" --population 4 --seed "$seed" \
    -n 1024000 --eval-freq 20480 --eval-episodes 150 --heldout-episodes 240 --perturb-every 4 \
    -o "$dir" >"$dir/stdout.log" 2>"$dir/stderr.log"
  rc=$?
  echo "$(date -u +%FT%TZ) end $spec rc=$rc sid $SID load $(cut -d' ' -f1-3 /proc/loadavg) $(tail -1 "$dir/stdout.log")"
done
