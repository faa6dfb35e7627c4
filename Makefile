# Two commands on a fresh machine:  `make local`  (run the product locally)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: local serve test lint bench build clean

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
	$(BIN)/mypy layers/audiohook/audiohook

bench: $(BIN)/audiohook
	$(BIN)/python bench/lambda_bench.py
	$(BIN)/python bench/local_bench.py
	$(BIN)/python bench/relay_bench.py

## Needs SAM CLI (pip install aws-sam-cli): builds the three functions and the shared layer.
build:
	sam build

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache
