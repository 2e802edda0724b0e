#!/usr/bin/env bash
# The project's GPU checks, in one run (a machine with an NVIDIA GPU and torch with CUDA):
#   bash recipes/gpu_checks.sh [OUTDIR]
# 1. tests/test_cuda.py (the device="cuda" paths against CPU) and the accessor tests; 2. recipes/bench_models.py
# with --device cuda at 512² and 2048² (FCLS, U-ADMM-AENet, DEQ-Unmix untrained and trained), and the same
# machine's CPU at 2048² for reference; 3. recipes/bench_deq_tile.py --device cuda. Each step has a bound.
set -u
out=${1:-${OUT:-gpu_checks_out}}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch, dask, xarray; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'dask', dask.__version__, 'xarray', xarray.__version__)" | tee -a "$out/gpu.txt"
timeout 120 $py -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_api.py 2>&1 | tee "$out/pytest.txt" | tail -15
timeout 180 $py recipes/bench_models.py --device cuda --threads 4 --sizes 512 2048 --rounds 1 \
    --cases fcls uadmm deq deq-trained --trained-max-size 2048 2>&1 | tee "$out/bench_models_cuda.txt" | tail -14
timeout 60 $py recipes/bench_models.py --device cpu --threads 16 --sizes 2048 --rounds 1 \
    --cases fcls uadmm deq 2>&1 | tee "$out/bench_models_cpu16.txt" | tail -7
timeout 80 $py recipes/bench_deq_tile.py --device cuda --repeat 3 2>&1 | tee "$out/bench_deq_tile_cuda.txt" | tail -30
