#!/usr/bin/env bash
# Every GPU measurement okd-ray owes, in one run on one GPU (about 8 minutes on an H100; the `device` tool's budget
# is 15): what runs there, exactly, and how fast. Writes Parquet under experiments/results/ and a log beside it.
#
#   bash experiments/gpu_check.sh            # from the repository root, on a machine with a GPU
#
# 1. gpu_exact.py: the Ray engine against the local engine, bit for bit, on the GPU: every transport (direct over
#    CUDA IPC where parts share the GPU), fp32 and bf16, eager and compiled, contiguous and channels_last, replicas.
# 2. bench_engine.py: step times of the ResNet-20 AFD pair and FFL triple, batch 128: the plain loop, the local
#    engine and every transport, fp32 and bf16, eager; then eager and compiled, contiguous and channels_last, for
#    the plain loop, the local engine and direct (collective is refused on a shared GPU: its row says so).
set -uo pipefail
cd "$(dirname "$0")"
results=results
log=$results/gpu_check.log
mkdir -p $results
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  start=$SECONDS
  timeout 240 python gpu_exact.py --device cuda --out $results/gpu_exact_cuda.parquet
  echo "gpu_exact: $((SECONDS - start)) s"; start=$SECONDS
  timeout 150 python bench_engine.py --device cuda --precision fp32 bf16 --steps 30 --warmup 5 \
    --transports object_store compiled direct collective --out $results/bench_engine_cuda.parquet
  echo "bench_engine transports: $((SECONDS - start)) s"; start=$SECONDS
  timeout 180 python bench_engine.py --device cuda --modes eager compiled --memory-format contiguous channels_last \
    --steps 30 --warmup 5 --transports direct --out $results/bench_engine_cuda_compiled.parquet
  echo "bench_engine compiled: $((SECONDS - start)) s"
} 2>&1 | tee $log
