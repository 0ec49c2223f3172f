# The two entry points of the README: `make demo` and `make test`. Each creates the virtual environment,
# installs the pinned dependencies (constraints.txt) and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# setup.py builds the host C extension engine._frame_resize (csrc/cpu/) wherever a C compiler is. The CUDA extension
# (csrc/, built by setup.py when nvcc exists) is compiled for these GPUs only, to keep the build short; a release
# build leaves HTK_CUDA_ARCHS unset (sm_80, 86, 89, 90). HTK_SKIP_CUDA_BUILD=1 skips it.
HTK_CUDA_ARCHS ?= 80;90
export HTK_CUDA_ARCHS
# Triton's load generator: the last tritonclient wheel whose perf_analyzer runs on glibc 2.36 (later ones need 2.38);
# installed beside the environment (its Python client is not used), found by engine.serve.perf.
PERF_ANALYZER_TRITONCLIENT := 2.51.0

.PHONY: demo test lint clean

$(STAMP): pyproject.toml constraints.txt setup.py $(wildcard csrc/*) $(wildcard csrc/cpu/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[torch,dev,triton,artifacts,stream,bench,dicom,holoscan,openvino,serve]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt nvidia-pytriton
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --target $(VENV)/opt/perf_analyzer \
		tritonclient==$(PERF_ANALYZER_TRITONCLIENT)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m engine demo

test: $(STAMP)
	$(PY) -m ruff check engine htkernels tests benchmarks
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) demo_out build *.egg-info
