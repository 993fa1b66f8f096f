#!/usr/bin/env bash
# One prepared run on a machine with a CUDA GPU: the test suite (its CUDA tests run there) and the
# GPU benchmarks, each one's output saved under OUT, for docs/benchmarks.md ("On a GPU").
#
#   PY=/path/to/python benchmarks/device_check.sh [OUT]     (OUT defaults to $OUT, else results/device)
#
# PY must have a CUDA build of torch==2.13.0 and local_reg[dev] installed (DEVICE=cpu checks the
# script itself on a machine without a GPU). Each step has its own
# time limit, so that the whole fits in about 10 minutes; a step that fails or runs out of time is
# recorded in summary.txt and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-${OUT:-results/device}}")
mkdir -p "$out"
PY=${PY:-python}
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
step tests 300 "$PY" -m pytest -q -n 8 tests
cd benchmarks
# The neural-ODE throughput against torchdiffeq and torchode, every gradient method: small and large batch.
step "peers_throughput_${DEVICE}_b128" 90 "$PY" peers.py --throughput --device "$DEVICE" --rounds 5 --batch 128
step "peers_throughput_${DEVICE}_b4096" 90 "$PY" peers.py --throughput --device "$DEVICE" --rounds 5 --batch 4096
# The compiled step, eager and with CUDA graphs ("reduce-overhead").
step "compiled_$DEVICE" 150 "$PY" compiled.py --device "$DEVICE" --rounds 5
cat "$out/summary.txt"
