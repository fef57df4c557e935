# The two commands a user needs: `make demo` and `make test`. Both set up .venv themselves (so does `make lint`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.codeprior-installed
LINT_STAMP := $(VENV)/.codeprior-lint-installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: setup data lint test test-slow demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,test]'  # the core plus every command's extra (pyproject.toml)
	touch $(STAMP)

setup: $(STAMP)

# The lint extra (pinned ruff and mypy) on top of the set-up; redone whenever the set-up is (pyproject.toml changed).
$(LINT_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[lint]'
	touch $(LINT_STAMP)

# ruff lints and format-checks the whole tree (src, tests, benchmarks); mypy type-checks src/codeprior.
# Both read their settings from pyproject.toml.
lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/mypy

# Fashion-MNIST from Debian's dataset-fashion-mnist (IDX files); installed when missing and possible.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte ]; then \
	  echo "Installing Debian package dataset-fashion-mnist ..."; \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist"; \
	  elif command -v sudo >/dev/null; then (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist) || echo "warning: could not install dataset-fashion-mnist"; \
	  else echo "warning: $(FMNIST_DIR) missing; install dataset-fashion-mnist or pass --data-dir"; fi; \
	fi

test: setup data
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup data
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: setup data
	$(VENV)/bin/codeprior demo

# Benchmarks need one extra (faiss, for the k-means baseline of prior_scaling.py); each is one command, see
# docs/benchmarks.md.
bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	@echo "run a benchmark with: $(PY) -m benchmarks.<name>   (list: ls benchmarks/*.py; --smoke: seconds; results: docs/benchmarks.md)"

clean:
	rm -rf $(VENV) build src/*.egg-info
