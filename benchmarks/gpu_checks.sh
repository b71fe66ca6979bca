#!/usr/bin/env bash
# The GPU checks in one go, from the repository's root, on a machine with a CUDA device where python3 already has
# torch, torchvision, timm and the other dependencies (no network needed): sslx and every plugin installed without
# dependencies (wheels in .whl/ first, e.g. tomli-w, when the machine lacks them), the CUDA-marked tests, then the
# training throughput of benchmarks/throughput.py with model FLOPs utilisation (convnets, then the ViT row).
# Everything is written under $OUT (default gpu-checks/); each part has its own time limit so the others still run.
#
#   bash benchmarks/gpu_checks.sh
set -uo pipefail
out=${OUT:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
    fi
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . $(ls -d plugins/*/) || exit 1
    python3 -c "import ssl_engine.plugins as p; print('tasks:', ', '.join(p.get_host().registry.names('task')))"
} 2>&1 | tee "$out/setup.log"

timeout "${TEST_LIMIT:-240}" python3 -m pytest -m cuda -q -p no:cacheprovider --durations=15 tests 2>&1 |
    tee "$out/cuda-tests.log"

timeout "${BENCH_LIMIT:-240}" python3 benchmarks/throughput.py --backbones smallconv,resnet18 --device cuda \
    --workers 8 --settle 0.5 2>&1 | tee "$out/throughput.log"

timeout "${VIT_LIMIT:-90}" python3 benchmarks/throughput.py --tasks simclr --backbones timm:vit_tiny_patch16_224 \
    --device cuda --workers 8 --settle 0.5 2>&1 | tee "$out/throughput-vit.log"
