#!/usr/bin/env bash
# Kernel-level measurements on one GPU (docs/performance.md, issues 11 and 14): correctness of the
# changed kernels on the device, the skinny decode GEMM vs cuBLAS, KV block copy vs a device copy,
# attention tiles vs SDPA, where an 8k prefill's time goes, and the engine table (ENGINE_BENCH=0
# leaves it out). Usage: bash bench/gpu_kernels.sh OUT_DIR
set -uo pipefail
out=${1:-.}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kv_transfer/test_block_copy.py tests/engine/test_triton_attention.py \
  tests/engine/test_triton_gemv.py 2>&1 | tail -3 | tee "$out/tests.txt"
timeout 90 python3 -m bench.gemv_bench --batches 1,2,4,8,16 --out "$out/gemv_bench.json" 2>&1 | tee "$out/gemv_bench.txt"
timeout 90 python3 -m bench.kv_transfer_bench --tokens 256,1024,4096,16384,32768 --breakdown \
  --out "$out/kv_transfer_bench.json" 2>&1 | tee "$out/kv_transfer_bench.txt"
timeout 120 python3 bench/attention_bench.py --sweep --only prefill --out "$out/attn_sweep.json" 2>&1 | grep -v Warning | tee "$out/attn_sweep.txt"
timeout 120 python3 -m bench.decode_profile --prefill --cases 2x8192,4x2048 --json "$out/prefill_profile.json" 2>&1 \
  | grep -v "^INFO\|Warning" | tee "$out/prefill_profile.txt"
[ "${ENGINE_BENCH:-1}" = 0 ] || timeout 200 python3 -m bench.engine_bench --preset llama-3.1-8b --cases 1x512x128,32x512x128,128x512x64,256x1000x1000,4x8192x2 \
  --json "$out/engine_bench.json" 2>&1 | grep -v "^INFO" | tail -20 | tee "$out/engine_bench.txt"
