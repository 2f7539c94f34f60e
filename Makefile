# Two entry points, each doing all set-up first: `make demo` and `make test`.
# Everything goes into a project virtual environment, .venv (nothing is installed system-wide;
# a Debian/Ubuntu interpreter refuses that anyway, PEP 668). The dependencies are pyproject.toml's:
# its build requirements first (the compiled core is built against the torch it will run with,
# so without build isolation), then the package with its [test] extra.
#
# VENV_FLAGS=--system-site-packages (the default) lets the venv reuse a torch the interpreter
# already has (torch with its CUDA libraries is ~5 GB to download); anything missing or of
# another version is installed into .venv. `make VENV_FLAGS= test` makes a fully isolated one.
VENV ?= .venv
VENV_FLAGS ?= --system-site-packages
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
STAMP := $(VENV)/.sketchmine-installed
SOURCES := setup.py pyproject.toml CMakeLists.txt $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cu)
# pyproject.toml's [build-system] requires, read from the file (the first `requires = [...]` in it)
BUILD_REQUIRES = $(shell python3 -c "import re; t = open('pyproject.toml').read(); \
	print(' '.join(repr(r) for r in re.findall(r'\"([^\"]+)\"', re.search(r'requires = \[(.*?)\]', t, re.S)[1])))")

.PHONY: demo test setup bench clean ort

demo: $(STAMP)
	$(PYTHON) -m sketchmine demo

# the suite on TEST_WORKERS pytest-xdist processes (auto: one per CPU; 1: in this process), a test
# file per worker at a time so its module fixtures (mined runs) are made once; the slowest twenty
# steps are printed, so a CI log says where the suite's time went
TEST_WORKERS ?= auto

test: $(STAMP) ort
	$(PYTHON) -m pytest -q --durations=20 $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# onnxruntime-web for the report's live probe (pinned, from npm; git-ignored: 14 MB of WebAssembly)
ort:
	@if command -v npm >/dev/null; then scripts/vendor_ort_web.sh; \
	else echo "npm is missing: the live probe's tests skip (scripts/vendor_ort_web.sh vendors onnxruntime-web)"; fi

# the peer (zennit-crp) goes into the benchmark environment only: not a sketchmine dependency
bench: $(STAMP)
	$(PIP) install -q "zennit-crp==0.6.0"
	$(PYTHON) -m benchmarks --visualize

setup: $(STAMP)

$(PYTHON):
	python3 -m venv $(VENV_FLAGS) $(VENV)

# torch/torchvision come from the package index pip is configured with (this machine's disk here);
# the extension is built against them, with the CUDA kernels whenever nvcc is present.
$(STAMP): $(PYTHON) $(SOURCES)
	$(PIP) install -q $(BUILD_REQUIRES)
	$(PIP) install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

clean:
	rm -rf build python/sketchmine/_C*.so $(VENV)
