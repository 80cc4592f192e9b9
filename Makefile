# llmplat — `make serve` and `make test` need only python3.11 and make.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch 2.13.0+cpu lives in pip's configured local wheel folder; uv does not read
# pip's configuration, so hand it the same folder(s).
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on these machines) Python never
# caches bytecode itself, so every Ray worker and engine process would compile torch, vLLM
# and Ray from source at start (platform start ~140 s -> 84 s on 2 cores with it).
UV_FLAGS := $(foreach d,$(FIND_LINKS),--find-links $(d)) --excludes .ci/excludes.txt --compile-bytecode
PYTEST_ARGS ?=
# checkov (tests/chart: security checks of the rendered chart) pins old networkx and packaging,
# so it lives in a virtualenv of its own inside .venv.
CHECKOV_VERSION := 3.3.30
CHECKOV := $(VENV)/tools/checkov/bin/checkov

.PHONY: serve test test-slow test-unit test-integration test-gpu gpu-check test-chart test-k8s bench bench-sharded lint model venv clean system-deps mutation \
	chart chart-files chart-values manifests docs

venv: $(STAMP)

# Re-installs only when the dependency declaration changes: a second run costs nothing.
$(STAMP): pyproject.toml .ci/excludes.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python $(UV_FLAGS) -e ".[cpu,dev]"
	@touch $(STAMP)

$(CHECKOV): | $(STAMP)
	$(BIN)/uv venv -q --python $(PYTHON) $(VENV)/tools/checkov
	$(BIN)/uv pip install -q --python $(VENV)/tools/checkov/bin/python checkov==$(CHECKOV_VERSION)

model: $(STAMP)
	$(BIN)/llmplat model build-tiny

serve: $(STAMP)
	$(BIN)/llmplat serve

# Debian packages the tests need: redis-server (quota tests), kubectl (kustomize overlays).
# Root installs them; others get told how.
SYSTEM_PACKAGES := redis-server kubectl

system-deps:
	@for pkg in $(SYSTEM_PACKAGES); do \
	  command -v $$pkg >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo=sudo; \
	  else echo "$$pkg is missing: run 'sudo apt-get install $$pkg'" >&2; exit 1; fi; \
	  echo "installing $$pkg (apt-get)"; \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg >/dev/null || exit 1; \
	done

test: $(STAMP) system-deps $(CHECKOV)
	$(BIN)/python -m pytest -q --durations=15 -m "not slow" $(PYTEST_ARGS)

# The scenarios that start vLLM engines again and again (tests/integration/test_autoscaling_e2e.py:
# a flood to two replicas and back, scale to zero and back, Ctrl-C and restart;
# test_sharded_e2e.py: two local nodes, PP 2 and TP 2, a node killed and brought back) and
# the per-minute limit across a clock minute: kept out of `make test`; CI runs both (.ci/run).
test-slow: $(STAMP) system-deps
	$(BIN)/python -m pytest -q --durations=15 -m slow $(PYTEST_ARGS)

test-unit: $(STAMP) system-deps
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) system-deps
	$(BIN)/python -m pytest -q tests/integration $(PYTEST_ARGS)

# The Helm chart, values files and kustomize overlays (no cluster needed); test-k8s is its
# former name.
test-chart: $(STAMP) system-deps $(CHECKOV)
	$(BIN)/python -m pytest -q tests/chart tests/unit/k8s tests/unit/planner $(PYTEST_ARGS)

test-k8s: test-chart

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu tests/gpu $(PYTEST_ARGS)

# On a machine with NVIDIA GPUs and `.[gpu]` installed: the GPU tests, the sharded layouts
# (TP 2, PP 2, TP 2 + expert parallel) and the 8x22B profiles' validation. Skips cleanly
# (and fails nothing) without GPUs; not part of make test.
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m gpu tests/gpu $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q tests/unit/engine tests/unit/config $(PYTEST_ARGS)

bench: $(STAMP) system-deps
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/gateway.py
	$(BIN)/python benchmarks/admission.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/loop_lag.py

# PP 2 across two local nodes and TP 2 in one against the unsharded engine (its own platform).
bench-sharded: $(STAMP)
	$(BIN)/python benchmarks/sharded.py

# Regenerate what the chart embeds from its sources (the tests fail when they drift):
# dashboards and rules copied from deploy/, the generated block of each values file
# (layouts sized by the planner, serve config from the profiles), the kustomize overlays.
chart: chart-files chart-values manifests

chart-files:
	rm -f helm/llmplat/files/grafana/*.json
	cp deploy/grafana/dashboards/*.json helm/llmplat/files/grafana/
	cp deploy/prometheus/rules.yaml helm/llmplat/files/prometheus/rules.yaml

chart-values: $(STAMP)
	$(BIN)/llmplat deploy values --refresh helm/llmplat/values.yaml deploy/values/*.yaml

manifests: $(STAMP) chart-files chart-values
	cd tests && ../$(BIN)/python -m support.chart write-kustomize

# ruff; the package layers and their independence (pyproject: [tool.importlinter]); dead code
# (vulture: pyproject's [tool.vulture], framework hooks named in tools/vulture_whitelist.py).
lint: $(STAMP)
	$(BIN)/ruff check platform tests benchmarks loadtests deploy tools
	$(BIN)/lint-imports
	$(BIN)/vulture

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a broken link or anchor,
# a page missing from nav or a missing included README fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build site *.egg-info

# Mutation testing of quotas/, auth/ and gateway/ against the unit tests (platform/setup.cfg),
# on a reproducible sample: platform/mutation_sample.py generates the mutants, draws
# MUTATION_PER_PACKAGE names per package from the sorted list with MUTATION_SEED, runs exactly
# those and prints per package drawn / killed / survived / no tests / timeout, the score and
# its 95 % Wilson interval. All ~4,600 mutants would take many hours on 2 cores; not part of
# `make test`. See a survivor with `cd platform && ../.venv/bin/mutmut show NAME`; after adding
# tests, `make mutation MUTATION_ARGS=--survivors-only` reruns only the drawn mutants that
# ran and survived.
MUTMUT_VERSION := 3.8.1
MUTATION_PER_PACKAGE ?= 200
MUTATION_SEED ?= 17
MUTATION_PACKAGES ?= quotas auth gateway
MUTATION_CHILDREN ?= $(shell nproc)
MUTATION_ARGS ?=
mutation: $(STAMP)
	$(BIN)/uv pip install -q --python $(BIN)/python mutmut==$(MUTMUT_VERSION)
	PYTHONPATH=$(CURDIR)/platform LLMPLAT_CONFIG_DIR=$(CURDIR)/configs \
		LLMPLAT_LOADTEST__DIR=$(CURDIR)/loadtests \
		$(BIN)/python platform/mutation_sample.py run --per-package $(MUTATION_PER_PACKAGE) \
		--seed $(MUTATION_SEED) --packages $(MUTATION_PACKAGES) --max-children $(MUTATION_CHILDREN) \
		$(MUTATION_ARGS)
