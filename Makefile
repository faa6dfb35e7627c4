# Two commands on a fresh machine:  `make local`  (run the product locally)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: local serve test lint bench build sam-check clean

$(BIN)/audiohook: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

## Run the whole product locally (embedded AWS + local API Gateway), probe it, place a call, show the audio.
local: $(BIN)/audiohook
	$(BIN)/audiohook serve --demo

## Just serve locally (no demo traffic).
serve: $(BIN)/audiohook
	$(BIN)/audiohook serve

## The whole test suite, including the offline template lint. CI runs exactly this.
test: $(BIN)/audiohook
	$(BIN)/cfn-lint template.yaml
	$(BIN)/python -m pytest

lint: $(BIN)/audiohook
	$(BIN)/ruff check layers handlers tests bench
	$(BIN)/mypy src/audiohook

bench: $(BIN)/audiohook
	$(BIN)/python bench/lambda_bench.py
	$(BIN)/python bench/local_bench.py
	$(BIN)/python bench/relay_bench.py
	$(BIN)/python bench/control_bench.py

## `sam build`: the three functions and the Lambda layer (layers/audiohook/Makefile). SAM's Python
## builder needs a python3.12 on PATH ("Binary validation failed for python" otherwise): this finds
## one (PATH, then pyenv). Without one, `sam build --use-container` builds in Docker instead.
# (pyenv's shim answers to `command -v python3.12` even when it cannot run it: try each candidate.)
PYTHON312 := $(shell for p in $$(command -v python3.12) $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
                       "$$p" -c "" 2>/dev/null && echo "$$p" && break; done)
SAM       ?= $(or $(shell command -v sam 2>/dev/null),$(BIN)/sam)

build:
	@test -n "$(PYTHON312)" || { echo "sam build needs python3.12 on PATH (or run: sam build --use-container)"; exit 1; }
	PATH="$(dir $(PYTHON312)):$$PATH" $(SAM) build

## SAM's own checks of the template: `sam validate --lint`, and `sam build` when a python3.12 exists.
## SAM CLI gets a virtualenv of its own (its pins clash with the test tools').
SAM_VENV := .venv-sam
$(SAM_VENV)/bin/sam:
	$(or $(PYTHON312),$(PYTHON)) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/pip install --quiet "aws-sam-cli>=1.120,<2"

sam-check: $(SAM_VENV)/bin/sam
	AWS_DEFAULT_REGION=us-east-1 $(SAM_VENV)/bin/sam validate --lint
	@if [ -n "$(PYTHON312)" ]; then $(MAKE) --no-print-directory build SAM=$(SAM_VENV)/bin/sam; \
	else echo "no python3.12 here: sam build skipped"; fi

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .pytest_cache
