# llmplat — `make serve` and `make test` need only python3.11 and make.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch 2.13.0+cpu lives in pip's configured local wheel folder; uv does not read
# pip's configuration, so hand it the same folder(s).
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_FLAGS := $(foreach d,$(FIND_LINKS),--find-links $(d)) --excludes .ci/excludes.txt
PYTEST_ARGS ?=

.PHONY: serve test test-unit test-integration test-gpu bench lint model venv clean

venv: $(STAMP)

# Re-installs only when the dependency declaration changes: a second run costs nothing.
$(STAMP): pyproject.toml .ci/excludes.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python $(UV_FLAGS) -e ".[cpu,dev]"
	@touch $(STAMP)

model: $(STAMP)
	$(BIN)/llmplat model build-tiny

serve: $(STAMP)
	$(BIN)/llmplat serve

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu tests/gpu $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/serving.py

lint: $(STAMP)
	$(BIN)/ruff check platform tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
