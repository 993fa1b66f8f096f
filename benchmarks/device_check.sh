#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU: the test suite (its CUDA tests run there) and the
# GPU benchmarks, each one's output saved under OUT, for docs/benchmarks.md ("On a GPU").
#
#   PY=/path/to/python benchmarks/device_check.sh [OUT]     (OUT defaults to $OUT, else results/device)
#
# PY must have a CUDA build of torch and local_reg[dev] installed (DEVICE=cpu checks the script
# itself on a machine without a GPU). Each step has its own time limit, so that the whole fits in
# under 10 minutes; a step that fails or runs out of time is recorded in summary.txt and the next
# one still runs. The CUDA tests come first, the whole suite (mostly CPU tests) last.
set -uo pipefail
# Resolved now, from the caller's directory: the benchmarks run from benchmarks/, where a relative
# PY would not be found (command -v leaves a relative path with a slash, .venv/bin/python, as is).
PY=$(command -v "${PY:-python}") || { echo "no Python at PY=${PY:-python}" >&2; exit 2; }
PY=$(realpath -s "$PY")
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-${OUT:-results/device}}")
mkdir -p "$out"
DEVICE=${DEVICE:-cuda}

step() {  # step NAME SECONDS COMMAND...: run COMMAND with a time limit, its output in OUT/NAME.txt
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" >"$out/$name.txt" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s" >>"$out/summary.txt"
}

: >"$out/summary.txt"
step device 30 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'"
# Every public path on the GPU against the CPU (tests/test_cuda.py) and the bad-input checks' CUDA cases.
step "tests_$DEVICE" 120 env LOCAL_REG_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -rA -n 4 tests/test_cuda.py \
    tests/test_bad_input.py -k "test_cuda or $DEVICE"
cd benchmarks
# The neural-ODE throughput against torchdiffeq and torchode, every gradient method: small and large batch.
step "peers_throughput_${DEVICE}_b128" 75 "$PY" peers.py --throughput --device "$DEVICE" --rounds 5 --batch 128
step "peers_throughput_${DEVICE}_b4096" 75 "$PY" peers.py --throughput --device "$DEVICE" --rounds 5 --batch 4096
# The compiled step, eager and with CUDA graphs ("reduce-overhead").
step "compiled_$DEVICE" 120 "$PY" compiled.py --device "$DEVICE" --rounds 5
cd ..
workers=$(($(nproc) - 2))
step tests 150 "$PY" -m pytest -q -n "$((workers > 0 ? workers : 1))" tests
cat "$out/summary.txt"
