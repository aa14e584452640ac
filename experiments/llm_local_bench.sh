#!/usr/bin/env bash
# Decision-suite measurements of the LLM manager with local models (issue 13).
# Needs: rl-manager llm build-server; rl-manager llm pull; rl-manager llm pull qwen2.5-coder-0.5b.
# Each run starts its own llama-server ($THREADS threads, default 1: on 2 cores shared with other work, one
# thread generated ~12 tokens/s and two ~2 tokens/s) and writes experiments/results/llm_local/<name>.json.
# Usage: bash experiments/llm_local_bench.sh [RUN ...]   (default: every run below, ~1.5 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=experiments/results/llm_local
HELDOUT=experiments/llm_heldout_suite.yaml
HELDOUT2=experiments/llm_heldout2_suite.yaml  # written 2026-12-03, before the worked-examples variant ran
FETCH=experiments/fetch_pick_suite.yaml  # 2026-12-06: item 2's judged PickAndPlace boundaries (fetch_decision_suite.py)
THREADS=${THREADS:-1}
bench() {  # name model suite(visible|heldout|heldout2) [ENV=VALUE ...]
  local name=$1 model=$2 suite=$3; shift 3
  local suite_args=()
  [[ $suite == heldout ]] && suite_args=(--suite "$HELDOUT")
  [[ $suite == heldout2 ]] && suite_args=(--suite "$HELDOUT2")
  [[ $suite == fetch ]] && suite_args=(--suite "$FETCH")
  echo "== $name: $model on $suite $*"
  env "$@" nice -n 10 python -m rl_manager.bench_decisions --manager llm --llm-gguf "$model" --threads "$THREADS" \
    "${suite_args[@]}" --out "$OUT/$name.json" --label "$name $*"
}
runs=("$@")
[[ ${#runs[@]} -eq 0 ]] && runs=(one15_visible one15_heldout two15_visible two15_heldout full15_heldout one05_visible one05_heldout)
for run in "${runs[@]}"; do
  case $run in
    # compact prompt, two stages (prose, then the menu schema at temperature 0)
    two15_visible) bench "$run" qwen2.5-coder-1.5b visible RL_MANAGER_TWO_STAGE=true ;;
    two15_heldout) bench "$run" qwen2.5-coder-1.5b heldout RL_MANAGER_TWO_STAGE=true ;;
    two05_visible) bench "$run" qwen2.5-coder-0.5b visible RL_MANAGER_TWO_STAGE=true ;;
    two05_heldout) bench "$run" qwen2.5-coder-0.5b heldout RL_MANAGER_TWO_STAGE=true ;;
    # one stage (the default): the menu schema with reason and problem before the action
    one15_visible) bench "$run" qwen2.5-coder-1.5b visible RL_MANAGER_TWO_STAGE=false ;;
    one15_heldout) bench "$run" qwen2.5-coder-1.5b heldout RL_MANAGER_TWO_STAGE=false ;;
    one05_visible) bench "$run" qwen2.5-coder-0.5b visible RL_MANAGER_TWO_STAGE=false ;;
    one05_heldout) bench "$run" qwen2.5-coder-0.5b heldout RL_MANAGER_TWO_STAGE=false ;;
    # one stage with the rule manager's reading of the snapshot as a second opinion (RL_MANAGER_ADVICE)
    adv15_visible) bench "$run" qwen2.5-coder-1.5b visible RL_MANAGER_TWO_STAGE=false RL_MANAGER_ADVICE=true ;;
    adv15_heldout) bench "$run" qwen2.5-coder-1.5b heldout RL_MANAGER_TWO_STAGE=false RL_MANAGER_ADVICE=true ;;
    adv05_visible) bench "$run" qwen2.5-coder-0.5b visible RL_MANAGER_TWO_STAGE=false RL_MANAGER_ADVICE=true ;;
    adv05_heldout) bench "$run" qwen2.5-coder-0.5b heldout RL_MANAGER_TWO_STAGE=false RL_MANAGER_ADVICE=true ;;
    # the prompt and response format before issue 13 (0.391 on the visible suite in the issue)
    full15_visible) bench "$run" qwen2.5-coder-1.5b visible RL_MANAGER_PROMPT=full RL_MANAGER_RESPONSE_FORMAT=json_object ;;
    full15_heldout) bench "$run" qwen2.5-coder-1.5b heldout RL_MANAGER_PROMPT=full RL_MANAGER_RESPONSE_FORMAT=json_object ;;
    # the second held-out split: plain, and with one worked example per problem (RL_MANAGER_EXAMPLES)
    one05_heldout2) bench "$run" qwen2.5-coder-0.5b heldout2 RL_MANAGER_TWO_STAGE=false ;;
    one15_heldout2) bench "$run" qwen2.5-coder-1.5b heldout2 RL_MANAGER_TWO_STAGE=false ;;
    ex05_heldout2) bench "$run" qwen2.5-coder-0.5b heldout2 RL_MANAGER_TWO_STAGE=false RL_MANAGER_EXAMPLES=true ;;
    ex15_heldout2) bench "$run" qwen2.5-coder-1.5b heldout2 RL_MANAGER_TWO_STAGE=false RL_MANAGER_EXAMPLES=true ;;
    ex05_heldout) bench "$run" qwen2.5-coder-0.5b heldout RL_MANAGER_TWO_STAGE=false RL_MANAGER_EXAMPLES=true ;;
    ex15_heldout) bench "$run" qwen2.5-coder-1.5b heldout RL_MANAGER_TWO_STAGE=false RL_MANAGER_EXAMPLES=true ;;
    exadv05_heldout2) bench "$run" qwen2.5-coder-0.5b heldout2 RL_MANAGER_TWO_STAGE=false RL_MANAGER_EXAMPLES=true RL_MANAGER_ADVICE=true ;;
    exadv15_heldout2) bench "$run" qwen2.5-coder-1.5b heldout2 RL_MANAGER_TWO_STAGE=false RL_MANAGER_EXAMPLES=true RL_MANAGER_ADVICE=true ;;
    adv05_heldout2) bench "$run" qwen2.5-coder-0.5b heldout2 RL_MANAGER_TWO_STAGE=false RL_MANAGER_ADVICE=true ;;
    adv15_heldout2) bench "$run" qwen2.5-coder-1.5b heldout2 RL_MANAGER_TWO_STAGE=false RL_MANAGER_ADVICE=true ;;
    # the main task's judged boundaries: alone and advised by the rule
    one15_fetch) bench "$run" qwen2.5-coder-1.5b fetch RL_MANAGER_TWO_STAGE=false ;;
    adv15_fetch) bench "$run" qwen2.5-coder-1.5b fetch RL_MANAGER_TWO_STAGE=false RL_MANAGER_ADVICE=true ;;
    one05_fetch) bench "$run" qwen2.5-coder-0.5b fetch RL_MANAGER_TWO_STAGE=false ;;
    adv05_fetch) bench "$run" qwen2.5-coder-0.5b fetch RL_MANAGER_TWO_STAGE=false RL_MANAGER_ADVICE=true ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
done
