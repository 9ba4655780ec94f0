#!/usr/bin/env bash
# One prepared GPU check (issue 13, part 3), < 8 min on one CUDA GPU:
#   1. the TSSD training step on CUDA with AMP (bf16), eager and torch.compile'd, per recipe (small, gesture_net,
#      vggsnn at their T_s/T_t and batch sizes), ms/step and peak CUDA memory;
#   2. a 1-GPU torchrun DDP smoke run (NCCL process group, DistributedDataParallel, gradients checked);
#   3. SpikingJelly 2.0's multi-step LIF on CUDA vs ours on the recipes' first-layer shapes (if spikingjelly imports);
# then prints one table. On a machine without CUDA it prints why and exits 0 without running anything.
#
#   bash bench/gpu_check.sh                 (PYTHON=python, GPU_CHECK_BATCH_SCALE=1.0, GPU_CHECK_BUDGET_S=300)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: skipped -- no CUDA device is visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "torch not importable")); nothing was run."
    exit 0
fi

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
RES="$OUT/results.jsonl"
: >"$RES"
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")'

echo "== 1/3 training steps (eager and compiled; budget ${GPU_CHECK_BUDGET_S:-300} s)"
timeout 360 "$PY" bench/gpu_check.py steps --out "$RES" --batch-scale "${GPU_CHECK_BATCH_SCALE:-1.0}" \
    --budget-s "${GPU_CHECK_BUDGET_S:-300}" || echo '{"check": "train step", "arch": "-", "T_s": "-", "T_t": "-", "B": 0, "compile": false, "amp": "bf16", "status": "steps run failed or timed out (see above)"}' >>"$RES"

echo "== 2/3 torchrun DDP smoke (1 GPU)"
timeout 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 bench/gpu_check.py ddp --out "$RES" \
    || echo '{"check": "torchrun DDP", "status": "FAILED (see above)"}' >>"$RES"

echo "== 3/3 LIF layer: ours vs SpikingJelly 2.0 on CUDA"
timeout 60 "$PY" bench/gpu_check.py lif --out "$RES" \
    || echo '{"check": "SpikingJelly LIF", "status": "FAILED (see above)"}' >>"$RES"

"$PY" bench/gpu_check.py table "$RES"
if grep -q -E '"status": "(FAILED|MISMATCH|steps run failed|loss is NaN|spikes differ)' "$RES"; then
    echo "gpu_check: some checks failed (see the table)"
    exit 1
fi
