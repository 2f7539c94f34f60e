# Two entry points, each doing all set-up first: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := build/.installed
SOURCES := setup.py pyproject.toml CMakeLists.txt $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu)

.PHONY: demo test setup bench clean ort

demo: $(STAMP)
	$(PYTHON) -m sketchmine demo

test: $(STAMP) ort
	$(PYTHON) -m pytest -q

# onnxruntime-web for the report's live probe (pinned, from npm; git-ignored: 14 MB of WebAssembly)
ort:
	@if command -v npm >/dev/null; then scripts/vendor_ort_web.sh; \
	else echo "npm is missing: the live probe's tests skip (scripts/vendor_ort_web.sh vendors onnxruntime-web)"; fi

# the peer (zennit-crp) goes into the benchmark environment only: not a sketchmine dependency
bench: $(STAMP)
	$(PIP) install -q "zennit-crp==0.6.0"
	$(PYTHON) -m benchmarks --visualize

setup: $(STAMP)

# torch/torchvision come from this machine's disk; the extension is built against them
# (no build isolation), with the CUDA kernels whenever nvcc is present.
$(STAMP): $(SOURCES)
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q "setuptools>=68" wheel "pybind11>=2.12" "cmake>=3.18" ninja \
		"numpy>=1.26" "zarr>=3.1.3,<4" "rich>=13" "pillow>=10" "pandas>=2" "pytest>=8" "hypothesis>=6.100" "ruff>=0.6" "mypy>=1.10" \
		"onnx>=1.16" "onnxruntime>=1.18" "onnxscript>=0.2" \
		"matplotlib>=3.7" "scipy>=1.10" "playwright>=1.40"
	$(PIP) install -q --no-build-isolation -e .
	mkdir -p build && touch $(STAMP)

clean:
	rm -rf build python/sketchmine/_C*.so
