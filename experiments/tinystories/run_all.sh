#!/usr/bin/env bash
# The whole TinyStories experiment (budget: <= 20 min on 2 CPU cores): the two arms in parallel
# (one torch thread each), then the interleaved throughput benchmark, then the table and plot.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}  # the interpreter of the active environment
OUT=${OUT:-experiments/results/tinystories}
SEED=${SEED:-0}
STEPS=${STEPS:-700}
start=$(date +%s)
$PY experiments/tinystories/train_lm.py train --arm baseline --seed "$SEED" --steps "$STEPS" --out "$OUT" > "$OUT.baseline.log" 2>&1 &
b=$!
$PY experiments/tinystories/train_lm.py train --arm managed --seed "$SEED" --steps "$STEPS" --out "$OUT" > "$OUT.managed.log" 2>&1 &
m=$!
wait $b $m
echo "arms done in $(( $(date +%s) - start )) s"
$PY experiments/tinystories/train_lm.py bench --rounds "${ROUNDS:-6}" --out "$OUT" > "$OUT.bench.log" 2>&1
echo "bench done in $(( $(date +%s) - start )) s"
$PY experiments/tinystories/train_lm.py summarize --out "$OUT"
echo "total $(( $(date +%s) - start )) s"
