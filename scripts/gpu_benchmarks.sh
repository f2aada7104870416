#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one go, on one CUDA machine (about 8 minutes on an H100/H200):
# fused-kernel correctness checks and OT timings, training throughput of uniter-base against BertModel (with
# the unpadded/varlen encoders checked against the padded one, and a kernel profile of each variant), and a
# short bf16 training run (varlen attention) + attention extraction on CUDA. Logs go to $OUT (default
# gpu-results/).
#   bash scripts/gpu_benchmarks.sh
#   STEPS="train_bench train_profile" bash scripts/gpu_benchmarks.sh   # only some steps (a short device lease)
set -u
STEPS=${STEPS:-ot_bench train_bench train_profile cuda_train}
OUT=${OUT:-gpu-results}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, keep going on failure
    local name=$1 limit=$2; shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "=== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
step ot_bench 120 $PY -m uniter_core.ot.bench --device cuda --check --sweep-warps
step train_bench 240 $PY -m uniter_core.bench_train --preset uniter-base --batch 256 --text 20 --regions 70 \
    --compile --check
step train_profile 120 $PY -m uniter_core.bench_train --preset uniter-base --batch 256 --text 20 --regions 70 \
    --warmup 2 --repeats 3 --profile
CORPUS=${CORPUS:-/tmp/gpu-corpus}  # a prebuilt corpus may be passed in; else a small one is built here
if [[ " $STEPS " == *" cuda_train "* && ! -f "$CORPUS/manifest.json" ]]; then
    $PY -m uniter_core.data.build_corpus --out "$CORPUS" --n-train 48 --n-val 8 --n-test 8 --shard-size 32
fi
step cuda_train 120 bash -c "$PY -m uniter_core.train --config configs/pretrain-mini.yaml --out /tmp/gpu-run \
  data.corpus=$CORPUS model.init=random run.num_steps=40 run.save_every=40 run.device=cuda optim.warmup_steps=5 \
  run.varlen_attention=true \
  && $PY -m analyses.export_stats --run /tmp/gpu-run --split test --out /tmp/gpu-stats --max-examples 8"
