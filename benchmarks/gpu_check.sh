#!/usr/bin/env bash
# GPU check: a fresh venv with the `gpu` extra (onnxruntime-gpu), the runtime tests under CUDA EP, and the edit
# benchmark on CUDA; writes $OUT/gpu_check.json (and the benchmark's edits.json / edits.md beside it).
#
# Never run by us: our machines have no GPU, and the GPU machines have no package registry. No GPU figure is
# claimed anywhere until someone has run this. Needs: an NVIDIA GPU with its driver, CUDA 12 / cuDNN 9 runtime
# libraries that the onnxruntime-gpu wheel accepts, Python >= 3.11, network access to PyPI.
#
#   benchmarks/gpu_check.sh                         # defaults below
#   VENV=/tmp/gpu-venv OUT=/tmp/gpu QUICK=0 benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
OUT=${OUT:-benchmarks/results/gpu}
TORCH_SPEC=${TORCH_SPEC:-torch}   # the exporter and the test fixtures need torch; any build will do
QUICK=${QUICK:-1}                 # 1: the benchmark's --quick workload; 0: the full default workload
PROVIDER=CUDAExecutionProvider

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
# never install onnxruntime (cpu) and onnxruntime-gpu into one environment: both own the onnxruntime folder
"$VENV/bin/python" -m pip install --quiet -e ".[gpu,export,dev]"
mkdir -p "$OUT"

"$VENV/bin/python" - "$PROVIDER" <<'EOF'
import sys

import onnxruntime as ort

want = sys.argv[1]
print(f"onnxruntime {ort.__version__} ({ort.get_device()}): available {ort.get_available_providers()}")
if want not in ort.get_available_providers():
    sys.exit(f"{want} is not available in this onnxruntime build: is onnxruntime-gpu installed (and the CPU wheel not)?")
EOF

# The runtime tests that use the `loaded` fixture run on $VQINC_TEST_PROVIDER (see tests/conftest.py); the
# provider tests check that model.providers really starts with it (ORT may fall back to CPU silently otherwise).
set +e
VQINC_TEST_PROVIDER=$PROVIDER "$VENV/bin/python" -m pytest -q -rs tests/runtime tests/benchmarks \
  --junitxml "$OUT/tests.xml" 2>&1 | tee "$OUT/tests.txt"
TESTS_RC=${PIPESTATUS[0]}
set -e

# mha: ORT's CUDA GroupQueryAttention takes float16/bfloat16 only (docs/OperatorKernels.md), so a float32 GQA
# decoder would run its attention on the CPU; MultiHeadAttention has a float32 CUDA kernel (the bundled model
# has as many kv heads as heads; for a GQA model such as SmolLM2 pass DECODER_ATTENTION=plain)
BENCH_ARGS=(--providers "$PROVIDER" --no-torch --decoder-attention "${DECODER_ATTENTION:-mha}" --out "$OUT")
if [ "$QUICK" = "1" ]; then BENCH_ARGS+=(--quick); fi
# --no-torch: the PyTorch contenders are CPU-only code; this check is about ONNX Runtime on CUDA
"$VENV/bin/python" benchmarks/edits.py "${BENCH_ARGS[@]}"

"$VENV/bin/python" - "$OUT" "$TESTS_RC" <<'EOF'
import json
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import onnxruntime as ort

out, rc = Path(sys.argv[1]), int(sys.argv[2])
suite = ET.parse(out / "tests.xml").getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except FileNotFoundError:
    smi = "nvidia-smi not found"
bench = json.loads((out / "edits.json").read_text())
report = {
    "onnxruntime": ort.__version__, "device": ort.get_device(), "available_providers": ort.get_available_providers(),
    "gpu": smi, "platform": platform.platform(),
    "tests": {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {"exit_code": rc},
    "benchmark": {"providers": bench["meta"]["providers"], "decoder_providers": bench["meta"]["decoder_providers"],
                  "file": str(out / "edits.json"),
                  "headline": {mode: {n: {k: w["summary"].get(k) for k in ("vqinc_ms", "prefix_kv_ms", "ort_full_ms",
                                                                            "x_vs_prefix_kv", "x_vs_ort_full")}
                                      for n, w in windows.items()}
                               for mode, windows in bench["modes"].items()}},
}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report["tests"]), "->", out / "gpu_check.json")
EOF
exit "$TESTS_RC"
