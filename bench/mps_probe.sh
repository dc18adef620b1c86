#!/usr/bin/env bash
# Does CUDA MPS run on this machine (one control daemon of our own, pipes under /tmp), and does
# the KV pull (CUDA IPC between two processes) still work under it? Usage: bash bench/mps_probe.sh OUT_DIR
# Starts the daemon, runs a one-line CUDA program and the KV copy bench at one size, stops the daemon.
set -uo pipefail
out=${1:-.}
export CUDA_MPS_PIPE_DIRECTORY=/tmp/splitserve-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/splitserve-mps/log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
{
  command -v nvidia-cuda-mps-control || { echo "no nvidia-cuda-mps-control on PATH"; exit 0; }
  timeout 10 nvidia-cuda-mps-control -d && echo "daemon started"
  sleep 1
  timeout 60 python3 -c "import torch; x = torch.ones(1 << 20, device='cuda'); print('cuda under mps:', x.sum().item())"
  echo get_server_list | timeout 5 nvidia-cuda-mps-control
  timeout 90 python3 -m bench.kv_transfer_bench --tokens 4096,16384 --out "$out/kv_transfer_mps.json" 2>&1 | tail -6
  echo quit | timeout 10 nvidia-cuda-mps-control
  sleep 1
  tail -20 "$CUDA_MPS_LOG_DIRECTORY"/*.log 2>/dev/null
} 2>&1 | tee "$out/mps_probe.txt"
