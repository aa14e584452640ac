#!/usr/bin/env bash
# FetchPickAndPlace on a lent GPU machine without internet (issue 16): the throughput benchmark, and training
# runs detached (a run outlasts one call there). Run from the repository, with the missing packages installed
# in /tmp/site (experiments/results/fetch_throughput/README.md, "Commands").
#   bash experiments/device_fetch.sh bench OUT_DIR SECONDS CONFIG...   # experiments/fetch_throughput.py
#   bash experiments/device_fetch.sh start NAME SEED [PARAM...]        # train detached; PARAM = recipe key:value
#   bash experiments/device_fetch.sh branch SRC NAME BUDGET [PARAM...]  # continue a copy of run SRC to BUDGET
#   bash experiments/device_fetch.sh costknob SEED                     # the declared cost-knob grid, detached
#   bash experiments/device_fetch.sh forked SEED                       # rule over a whole run, fixed from its first move
#   bash experiments/device_fetch.sh heldout NAME                      # once run NAME ends: its final model held-out
#   bash experiments/device_fetch.sh poll OUT_DIR [WAIT_S]             # wait up to WAIT_S (default 0) or until
#                                                                      # every run is done; pack
#                                                                      # the runs' logs into OUT_DIR/runs.tgz,
#                                                                      # their best models beside it (held-out
#                                                                      # elsewhere: train --evaluate MODEL; NOBEST=1:
#                                                                      # none; FINAL=1: final models too; LAST=1:
#                                                                      # the latest checkpoints' models)
# start reads ENV (default FetchPickAndPlace), DEV (default cuda), FULL (default --full: the recipe's budget), EF
# (evaluation every EF steps, default 20000), RECIPE (default tuned), MANAGER (default none) and XARGS (further train
# flags), e.g. DEV=cpu FULL="-n 2200" EF=1100 for a smoke test on a CPU machine, XARGS="--gpu --save-interval
# 100000" for the GPU setup without buffer pickles mid-run (a run that cannot be continued there anyway).
set -uo pipefail
res=${RES:-/tmp/fetchruns}  # where the runs live on the machine (RES: elsewhere, as in tests/test_device_fetch.py)
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -e rl_manager/envs ] || ln -s ../envs rl_manager/envs   # what setuptools' package-dir does on install
finished='done: [0-9]* steps in'  # a run's final line (rl_manager.train)
all_done() {  # every run under $res has printed its final line (false while there is none yet)
  local log
  for log in "$res"/*/stdout.log; do
    [ -f "$log" ] && grep -q "$finished" "$log" || return 1
  done
}
case "${1:?bench|start|branch|costknob|forked|heldout|poll}" in
  bench)
    out=${2:?out dir}; seconds=${3:?seconds}; shift 3
    mkdir -p "$out"
    python3 experiments/fetch_throughput.py --device cuda --seconds "$seconds" "$@" 2>&1 | tee "$out/bench.log"
    ;;
  start)
    name=${2:?name}; seed=${3:?seed}; shift 3
    # (train refuses a run folder that exists, but only after the detached launch has reported "started": a chain's
    # arm of that name left on the machine made a later start fail unseen, 2026-12-05)
    [ ! -e "$res/$name/run" ] || { echo "error: $res/$name/run exists (an earlier run or chain arm): move it away" >&2; exit 1; }
    mkdir -p "$res/$name"
    params=(); [ $# -gt 0 ] && params=(-params "$@")
    setsid nohup python3 -m rl_manager.train --env ${ENV:-FetchPickAndPlace} --recipe ${RECIPE:-tuned} --seed "$seed" ${FULL:---full} \
      --device ${DEV:-cuda} --manager ${MANAGER:-none} --eval-freq ${EF:-20000} --eval-episodes 50 --heldout-episodes 100 ${XARGS:-} \
      --run-dir "$res/$name/run" "${params[@]}" >"$res/$name/stdout.log" 2>&1 &
    echo "started $name (pid $!)"
    ;;
  branch)
    # a copy of a finished run continued to a larger budget, with MANAGER (default none) and recipe overrides:
    # arms that share the source's weights, replay buffer and evaluations up to the branch point
    src=${2:?source run}; name=${3:?name}; n=${4:?budget}; shift 4
    mkdir -p "$res/$name" && cp -r "$res/$src/run" "$res/$name/run"
    python3 - "$res/$name/run" "$n" "${MANAGER:-none}" "$@" <<'PY'
import json, sys, yaml
run, n, manager, *pairs = sys.argv[1:]
config = yaml.safe_load(open(f"{run}/config.yml"))
config.update(n_timesteps=int(n), manager=manager, tensorboard_log=f"{run}/tb")
for pair in pairs:
    key, value = pair.split(":", 1)
    config["recipe"][key] = yaml.safe_load(value)
yaml.safe_dump(config, open(f"{run}/config.yml", "w"), sort_keys=False)
# a resume re-applies the saved knobs outside the checkpoint (env reward weights): a new env_kwargs value goes there too
state = json.load(open(f"{run}/manager_state.json"))
state["knobs"].update({k: v for k, v in (config["recipe"].get("env_kwargs") or {}).items() if k in state["knobs"]})
json.dump(state, open(f"{run}/manager_state.json", "w"))
PY
    setsid nohup python3 -m rl_manager.train --resume "$res/$name/run" >"$res/$name/stdout.log" 2>&1 &
    echo "branched $name from $src (pid $!)"
    ;;
  costknob)
    # experiments/results/fetch_pick_costknob in one detached chain, so that no call has to wait for the trunk:
    # the trunk to 200k, then (once its summary is written) its arms to 360k: ARMS, default "rule fixed pen1" (fewer
    # arms share the machine's cores with fewer runs; penX: no manager, the cost penalty X from the branch point).
    # TRUNK, BUDGET, XARGS and PARAMS (trunk recipe overrides) change it for a smoke test on a CPU machine; HELDOUT
    # (default 400) is the size of the final models' held-out; no arm runs if the trunk's last evaluation success is
    # under MIN_SUCCESS (default 0.2).
    seed=${2:?seed}; me=$(realpath "$0"); mkdir -p "$res"; budget=${BUDGET:-360000}; arms=" ${ARMS:-rule fixed pen1} "
    for arm in $arms; do
      case $arm in
        rule | fixed | pen[0-9]*) ;;
        *) echo "error: unknown arm $arm (rule, fixed or pen<penalty>)" >&2; exit 2 ;;
      esac
    done
    setsid nohup bash -c "FULL='-n ${TRUNK:-200000}' XARGS='${XARGS:---gpu --save-interval 100000}' EF=${EF:-20000} \
      bash '$me' start trunk $seed ${PARAMS:-}
      until [ -f '$res/trunk/run/summary.json' ] || grep -q '^error' '$res/trunk/stdout.log'; do sleep 5; done
      [ -f '$res/trunk/run/summary.json' ] || exit 1
      # a trunk still at chance (last evaluation's success under MIN_SUCCESS, default the unsafe rule's 0.2) gives
      # the arms nothing to judge: seeds 238 and 244 never learned; stop and leave the machine's time for others
      python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); sys.exit(s[\"last_evaluation\"][\"success_rate\"] < float(sys.argv[2]))' \
        '$res/trunk/run/summary.json' ${MIN_SUCCESS:-0.2} || { echo 'trunk at chance: no arms'; exit 0; }
      for arm in $arms; do
        case \$arm in
          rule) MANAGER=rule bash '$me' branch trunk rule $budget ;;
          fixed) bash '$me' branch trunk fixed $budget ;;
          pen*) bash '$me' branch trunk \$arm $budget \"env_kwargs:{cost_penalty: \${arm#pen}}\" ;;
        esac
      done
      echo launched
      # then a larger held-out of each arm's final model (the same scenes in every arm; the first 100 are the run's)
      for arm in $arms; do bash '$me' heldout \$arm & done
      wait; echo evaluated" >"$res/chain.log" 2>&1 &
    echo "chain started (pid $!)"
    ;;
  forked)
    # the rule over a whole run against the fixed recipe, detached (the chain is `_forked`, logged to chain.log): the
    # rule-managed run to BUDGET (default 600000) with --fork-at-first-move; up to the rule's first move it is the
    # fixed run, so the fixed arm is the copy made just before that move, resumed with no manager (branch). Both final
    # models then on HELDOUT (default 400) scenes. A rule that never moves leaves no fork: its run is the fixed run.
    # The gate: if every run is still at chance at GATE steps (default 300000; the rule run's evaluation success
    # there, and the fixed arm's latest, under MIN_SUCCESS, default 0.2), both are stopped. SCREEN (steps, default
    # none): an earlier gate that stops them only if, at chance there, the rule run's median policy entropy over its
    # evaluations from SCREEN/2 on is above MAX_ENTROPY (default -2.5; ../results/fetch_throughput/README.md, "Which
    # seeds learn"). XARGS and PARAMS as in costknob.
    # (an earlier chain's runs, left on a machine still warm, made the chain's own start refuse unseen but in
    # chain.log, 2026-12-06: refuse here, before the launch)
    for d in rule forkpt fixed; do
      [ ! -e "$res/$d" ] || { echo "error: $res/$d exists (an earlier chain's runs): move $res away" >&2; exit 1; }
    done
    mkdir -p "$res"
    setsid nohup bash "$(realpath "$0")" _forked "${2:?seed}" >"$res/chain.log" 2>&1 &
    echo "chain started (pid $!)"
    ;;
  _forked)
    seed=$2; budget=${BUDGET:-600000}; gate=${GATE:-300000}
    evals() {  # "step success" of each evaluation of run $1 so far
      python3 -c 'import json, sys
for r in map(json.loads, open(sys.argv[1])):
    if r.get("snapshot"): print(r["step"], r["snapshot"]["evaluation"]["success_rate"])' "$res/$1/run/audit.jsonl" 2>/dev/null
    }
    entropy() {  # the median policy entropy of the rule run's evaluations at steps $1 to $2 (nan: none read)
      python3 -c 'import json, statistics, sys
lo, hi = map(int, sys.argv[2:])
h = [r["snapshot"]["health"]["entropy"] for r in map(json.loads, open(sys.argv[1])) if r.get("snapshot") and lo <= r["step"] <= hi]
h = [x for x in h if x is not None]
print(statistics.median(h) if h else "nan")' "$res/rule/run/audit.jsonl" "$1" "$2"
    }
    ended() { grep -q "$finished\|^error" "$res/rule/stdout.log"; }
    past() { evals rule | awk -v g="$1" '$1 >= g {f = 1} END {exit !f}'; }
    branch_fixed() {  # once the fork is there: the fixed arm from it
      [ -d "$res/rule/run_fork" ] || return 1
      mkdir -p "$res/forkpt" && mv "$res/rule/run_fork" "$res/forkpt/run"
      echo "forked at step $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$res/forkpt/run/fork.json")"
      bash "$0" branch forkpt fixed "$budget"
    }
    stop_at_chance() {  # $1 steps, $2 where (gate or screen), $3 an entropy bound (none: any entropy): once past $1
      # (the fixed arm branched meanwhile if the rule moved), both runs stopped if every one is at chance there and,
      # with a bound, the rule run's median entropy from $1/2 on is above it (no entropy read: no stop)
      until past "$1" || ended; do branch_fixed; sleep 5; done
      past "$1" || return 0
      local step at latest entropy
      read -r step at < <(evals rule | awk -v g="$1" '$1 >= g {print $1, $2; exit}')
      latest=$( { echo "$at"; evals fixed | tail -n 1 | cut -d' ' -f2; } | sort -g | tail -n 1)
      entropy=$(entropy $(($1 / 2)) "$step")
      awk -v x="$latest" -v m="${MIN_SUCCESS:-0.2}" -v e="$entropy" -v b="${3:-}" \
        'BEGIN {exit !(x < m && (b == "" || (e != "nan" && e + 0 > b + 0)))}' || return 0
      pkill -f "$res/rule/run"; pkill -f "$res/fixed/run"
      echo "trunk at chance at the $2 ($1 steps: success $latest, median entropy $entropy): runs stopped"; exit 0
    }
    MANAGER=rule FULL="-n $budget" XARGS="${XARGS:---gpu --save-interval 100000} --fork-at-first-move" EF=${EF:-20000} \
      bash "$0" start rule "$seed" ${PARAMS:-}
    [ -z "${SCREEN:-}" ] || stop_at_chance "$SCREEN" screen "${MAX_ENTROPY:--2.5}"
    stop_at_chance "$gate" gate
    until [ -d "$res/rule/run_fork" ] || ended; do sleep 5; done
    grep -q '^error' "$res/rule/stdout.log" && { echo "error: the rule run failed (rule/stdout.log)"; exit 1; }
    [ -d "$res/fixed" ] || branch_fixed || echo "no move by the rule: its run is the fixed run"
    for arm in rule fixed; do [ -d "$res/$arm" ] && bash "$0" heldout "$arm" & done
    wait; echo evaluated
    ;;
  heldout)
    # once run NAME has ended: its final model on HELDOUT (default 400) held-out scenes (the same scenes in every
    # arm; the first 100 are the run's own), logged to NAME/heldout.log
    name=${2:?name}
    until grep -q "$finished\|^error" "$res/$name/stdout.log"; do sleep 5; done
    [ -e rl_manager/envs ] || ln -s ../envs rl_manager/envs  # (a later call's copy of the tree drops the link)
    python3 -m rl_manager.train --evaluate "$res/$name/run/final_model.zip" --heldout-episodes "${HELDOUT:-400}" \
      >"$res/$name/heldout.log" 2>&1
    ;;
  poll)
    out=${2:?out dir}; wait_s=${3:-0}
    bring() {  # model $1 (best, final or last) of run folder $2 into $out, in parts, with its normaliser if any
      local run=$2/run name=$1_$(basename "$2")
      [ -f "$run/$1_model.zip" ] || return 0
      split -b 15M "$run/$1_model.zip" "$out/$name.zip."
      [ ! -f "$run/$1_model_vecnormalize.pkl" ] || cp "$run/$1_model_vecnormalize.pkl" "$out/${name}_vecnormalize.pkl"
    }
    # wait up to WAIT_S, but no longer than until every run has printed its final line (held-out included):
    # a lent machine can be taken back between two calls, so the results come back in the call that sees them
    for ((t = 0; t < wait_s; t += 5)); do
      # (a costknob chain is done once its arms are done and their final models evaluated on HELDOUT episodes)
      # (no `grep -L ... | grep -q .` here: under pipefail, grep -L's exit status 1 made that check pass at once)
      { [ ! -f "$res/chain.log" ] || grep -q '^evaluated\|^trunk at chance' "$res/chain.log"; } && all_done && break
      [ -f "$res/chain.log" ] && grep -q 'runs stopped$\|^error' "$res/chain.log" && break  # (stopped runs never end)
      sleep 5
    done
    mkdir -p "$out"
    for d in "$res"/*/; do
      [ -f "$d/stdout.log" ] || continue  # (a fork point, copied to its arm)
      echo "== $(basename "$d"): $(tail -c 400 "$d/stdout.log" | tr '\r' '\n' | tail -2)"
      [ ! -f "$d/heldout.log" ] || echo "   final model, $(tail -n 1 "$d/heldout.log")"
      python3 - "$d/run/audit.jsonl" <<'PY' || true
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if not r.get("snapshot"):
        continue  # a resume or note record
    e = r["snapshot"]["evaluation"]
    print(f"  {r['step']:>8} {r['time'][11:19]} success {e['success_rate']:.2f} safe {e['safe_success_rate']:.2f} cost {e['mean_cost']:.2f}")
PY
      # the best model too, split under the 16-MiB limit on a file that comes back (cat best_NAME.zip.* >
      # best_model.zip), with its observation statistics where the recipe normalises (best_NAME_vecnormalize.pkl,
      # renamed best_model_vecnormalize.pkl beside it): a run lost with its machine can still be evaluated held-out
      # elsewhere. FINAL=1: the final model as well, once written, for a held-out elsewhere when the device time runs
      # out; LAST=1: the latest resumable checkpoint's model (every save_freq steps) without its buffer, for a held-out
      # of both arms at one step when a run outlives the device time (seed 260 left none)
      [ -z "${NOBEST:-}" ] && bring best "$d"
      [ -n "${FINAL:-}" ] && bring final "$d"
      [ -n "${LAST:-}" ] && bring last "$d"
    done
    (cd "$res" && find . \( -name '*.npz' -o -name '*.json' -o -name '*.log' -o -name '*.csv' -o -name '*.yml' -o -name 'audit.jsonl' \) \
      -print0 | tar czf "$out/runs.tgz" --null -T -)
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; uptime
    ;;
esac
