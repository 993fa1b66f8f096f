#!/usr/bin/env bash
# The study of local regularization's probe, penalty form, draws and weight (docs/results.md,
# "Study: probe, penalty form, draws, self-tuning weight"). Every run records its settings; the
# runner skips runs already in a results folder, so rerunning a phase resumes it.
#   experiments/study.sh PHASE      PHASE in: digits, digits_more, digits_tight, spiral, heldout
set -euo pipefail
cd "$(dirname "$0")/.."
LR="${LR:-python -m local_reg.experiments} experiment"
COMMON=(--seeds 3 --quick --threads 1 --no-progress)

# local-random at one (probe, penalty, weight): run PROBE PENALTY WEIGHT TASK OUT [extra --set ...]
variant() {
    local probe=$1 penalty=$2 weight=$3 task=$4 out=$5
    shift 5
    $LR "$task" --methods local-random "${COMMON[@]}" --out "$out" \
        --set local.probe="$probe" --set local.penalty="$penalty" --set weights.local-random="$weight" "$@"
}

grid() {  # the probe x penalty grid on one task and folder: grid TASK OUT [extra --set ...]
    local task=$1 out=$2
    shift 2
    $LR "$task" --methods vanilla "${COMMON[@]}" --out "$out" "$@"
    for probe in initial initial-hairer solver; do
        variant "$probe" error-dt '{"start": 2.5, "end": 1.0}' "$task" "$out" "$@"
        for w in 0.1 0.3; do variant "$probe" log "$w" "$task" "$out" "$@"; done
        for w in 2 6; do variant "$probe" growth "$w" "$task" "$out" "$@"; done
    done
}

case "${1:-}" in
    digits) grid digits results/study-digits ;;
    digits_tight) grid digits results/study-digits-tight --set solver.rtol=1.4e-8 --set solver.atol=1.4e-8 ;;
    spiral) grid spiral results/study-spiral ;;
    *) echo "usage: $0 digits|digits_tight|spiral" >&2; exit 2 ;;
esac
