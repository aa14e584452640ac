#!/usr/bin/env bash
# Issue 16, planning managed Fetch grids: env steps/s of one `--gpu` run (16 envs, 4 gradient steps per vector step)
# against two runs sharing the machine (8 envs, 2 gradient steps each: the same replay ratio), 60 s each after a 45-s
# warm-up, no evaluations. On the lent GPU machine, after the setup in experiments/results/fetch_throughput/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export EF=100000000 FULL="-n 5000000" XARGS="--gpu"
st() { bash experiments/device_fetch.sh start "$@" | grep -o 'pid [0-9]*' | cut -d' ' -f2; }
eps() { cat /tmp/fetchruns/$1/run/*.monitor.csv 2>/dev/null | wc -l; }
measure() { sleep 45; local a=0 b=0; for n in "$@"; do a=$((a+$(eps $n))); done; sleep 60; for n in "$@"; do b=$((b+$(eps $n))); done; echo "$* : $(( (b-a)*50/60 )) env steps/s in total"; }
p=$(st one 235); measure one; kill -- -$p; sleep 5
p1=$(st p1 236 n_envs:8 gradient_steps:2); p2=$(st p2 237 n_envs:8 gradient_steps:2); measure p1 p2; kill -- -$p1 -$p2
nvidia-smi --query-gpu=utilization.gpu --format=csv; tail -3 /tmp/fetchruns/p1/stdout.log
