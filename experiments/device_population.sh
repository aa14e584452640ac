#!/usr/bin/env bash
# PBT/PB2 populations (rl_manager.population) on a lent machine without internet, detached: a population
# outlasts one call there. Run from an unpacked `git archive` of the commit, with the missing packages
# installed in /tmp/site (see experiments/results/population_paper_reacher_v2/REPORT.md, "Commands").
#   bash experiments/device_population.sh start WORKERS SPEC...   # SPEC = sched:recipe:seed; returns at once
#   bash experiments/device_population.sh poll OUT_DIR [WAIT_S]   # wait up to WAIT_S (default 540); pack what
#                                                                 # finished into OUT_DIR/populations.tgz
# WORKERS populations run at once, each in its own local Ray instance (Ray gives each every core: the OS
# shares them out). Every population uses the protocol of experiments/population_paper_reacher.sh (POP_N,
# POP_EVAL_FREQ, POP_EPISODES and POP_HELDOUT shrink it for a smoke test).
set -uo pipefail
res=/tmp/popres
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD
[ -e rl_manager/envs ] || ln -s ../envs rl_manager/envs   # what setuptools' package-dir does on install
case "${1:?start|one|poll}" in
  start)
    workers=${2:?workers}; shift 2
    mkdir -p "$res" && printf '%s\n' "$@" >"$res/queue"
    setsid nohup bash -c "xargs -P $workers -I{} bash '$PWD/experiments/device_population.sh' one {} \
      <'$res/queue' >>'$res/lanes.log' 2>&1; touch '$res/done'" >/dev/null 2>&1 &
    echo "started $# populations, $workers at a time"
    ;;
  one)
    IFS=: read -r sched recipe seed <<<"$2"
    dir=$res/${sched}4_${recipe}_s${seed}
    mkdir -p "$dir"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAY_ADDRESS=local CUDA_VISIBLE_DEVICES= PYTHONUNBUFFERED=1
    echo "$(date -u +%FT%TZ) start $2 load $(cut -d' ' -f1-3 /proc/loadavg)"
    # the format population_report.py reads from /usr/bin/time -v (absent on some images)
    TIMEFORMAT=$'User time (seconds): %U\nSystem time (seconds): %S\nElapsed (wall clock) time (h:mm:ss or m:ss): 0:%R'
    { time python3 -m rl_manager.population --env PaperReacher --recipe "$recipe" --scheduler "$sched" \
      --population 4 --seed "$seed" -n "${POP_N:-1024000}" --eval-freq "${POP_EVAL_FREQ:-20480}" \
      --eval-episodes "${POP_EPISODES:-150}" --heldout-episodes "${POP_HELDOUT:-240}" --perturb-every 4 -o "$dir" >"$dir/stdout.log" 2>"$dir/stderr.log"; } 2>"$dir/time.txt"
    echo "$(date -u +%FT%TZ) end $2 rc=$? load $(cut -d' ' -f1-3 /proc/loadavg) $(tail -1 "$dir/stdout.log")"
    ;;
  poll)
    out=${2:?out dir}; wait_s=${3:-540}
    deadline=$((SECONDS + wait_s))
    until [ -e "$res/done" ] || [ "$SECONDS" -ge "$deadline" ]; do sleep 10; done
    cat "$res/lanes.log"
    for d in "$res"/*_s*/; do  # evaluations done per member
      echo "$(basename "$d"): $(find "$d" -name result.json -exec sh -c 'wc -l <"$1"' _ {} \; | tr '\n' ' ')"
    done
    mkdir -p "$out"
    (cd "$res" && find . \( -name summary.json -o -name time.txt -o -name result.json -o -name '*.log' \) \
      -print0 | tar czf "$out/populations.tgz" --null -T -)
    [ -e "$res/done" ] && echo "all done" || echo "still running"
    ;;
esac
