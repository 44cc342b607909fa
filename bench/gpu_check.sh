#!/usr/bin/env bash
# One-shot GPU check of the engine on a lent NVIDIA machine (the device tool's `run`, with
# carry [".whl"]): the CUDA cases of the engine tests, then the GPU benchmark
# (`bench/engine.py --device cuda`: ours eager and with CUDA graphs). Logs go to $OUT: env.log,
# engine-tests.log, gpu-bench.log. About 3 minutes; at most 6.5 (the two timeouts below).
#
# The image there has torch, transformers, safetensors, tokenizers, numpy, pyyaml and psutil;
# pytest and the test-only packages travel as wheels in .whl/ (ignored by git), fetched here by
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#     pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0 \
#     typing-extensions==4.16.0 pytest-asyncio==1.5.0 pytest-timeout==2.4.0 attrs==26.1.0 \
#     jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
#     rpds-py==2026.9.1
# (tests/conftest.py imports jsonschema). Pytest loads only the carried asyncio and timeout
# plugins, not the image's own; warnings are reported rather than raised there (-o
# filterwarnings=), since that torch/transformers pair differs from the one CI pins.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD

{
    nvidia-smi
    "$PYTHON" -c "import sys, torch, transformers
print(sys.version)
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available',
      torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')
print('transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.log"

status=0
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 150 "$PYTHON" -m pytest tests/engine -q -rs \
    --durations=5 -m engine -k cuda -p pytest_asyncio.plugin -p pytest_timeout \
    -p no:cacheprovider -o filterwarnings= 2>&1 | tee "$OUT/engine-tests.log" || status=1
timeout 240 "$PYTHON" bench/engine.py --device cuda 2>&1 | tee "$OUT/gpu-bench.log" || status=1
exit $status
