#!/usr/bin/env bash
# The KV-connector measurements on one GPU (docs/performance.md): kernel checks, the direct
# pull's bandwidth against a device copy, and serving with each transport side by side.
# Usage: bash bench/kv_connector_gpu.sh OUT_DIR   (Llama-3.1-8B shapes, random weights)
set -uo pipefail
out=${1:-.}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/kv_transfer 2>&1 | tail -3 | tee "$out/tests.txt"
python3 -m bench.kv_transfer_bench --variants 16384x8,16384x16,8192x8,2048x4 --out "$out/kv_transfer_bench.json" 2>&1 | tee "$out/kv_transfer_bench.txt"
python3 -m bench.pd_bench --preset llama-3.1-8b --rates 4,16 --requests 32 --prompt-len 1024:4096 \
  --max-tokens 64 --transports direct,store --out "$out/pd_bench.json" > "$out/pd_bench.log" 2>&1
tail -8 "$out/pd_bench.log"
