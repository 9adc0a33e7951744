# Set-up, tests and the book. Every target creates the virtualenv first, so on a
# fresh machine `make book` or `make test` is the only command needed (offline:
# pip resolves from the configured local wheel store and index).
#
#   make book              execute every notebook and build _build/html
#   make book SCALE=full   the same with LSUTILS_SCALE=full (slow)
#   make test              unit tests + doctests, then nbval over the notebooks

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
SCALE ?= quick
# nbval's per-cell limit; pytest-timeout's per-test limit is a backstop above it.
CELL_TIMEOUT ?= 900
TEST_TIMEOUT ?= 1200

PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
LINT_PATHS := $(wildcard lsutils tests benchmarks notebooks tools)
BENCHMARKS := $(sort $(wildcard benchmarks/*.py))
STATUS_ENV := _build/status/environment.md
REPORTS := _build/html/reports

# What every run of code from this repository sees: the scale of the notebooks
# and no debugger chatter from the kernel. Scripts and tests draw with Agg;
# notebooks need the inline backend (with Agg no figure reaches the output), set
# explicitly so that an MPLBACKEND from the caller's shell cannot hide figures.
RUN_ENV := LSUTILS_SCALE=$(SCALE) PYDEVD_DISABLE_FILE_VALIDATION=1
SCRIPT_ENV := $(RUN_ENV) MPLBACKEND=Agg
NB_ENV := $(RUN_ENV) MPLBACKEND=module://matplotlib_inline.backend_inline

.PHONY: help venv dev test unit nbval book status lint format bench clean distclean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: PYTHON=$(PYTHON) SCALE=$(SCALE) (quick|full) VENV=$(VENV)"

venv: $(STAMP)  ## Create .venv with requirements.txt and lsutils (editable)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e . --no-deps
	@# Register the venv's interpreter under the kernel name the notebooks use,
	@# with an absolute path, so nbval and the book never pick another Python.
	$(PY) -m ipykernel install --sys-prefix --name python3 \
	  --display-name "Python 3 (lsutils .venv)"
	$(VENV)/bin/jupyter kernelspec list
	touch $@

dev: $(STAMP)  ## Add the authoring tools of requirements-dev.txt (jupytext)
	$(PY) -m pip install -r requirements-dev.txt

test: unit nbval  ## Unit tests and doctests, then every notebook under nbval

unit: $(STAMP)  ## Unit tests and doctests only
	$(SCRIPT_ENV) $(PY) -m pytest tests lsutils --doctest-modules \
	  --timeout=$(TEST_TIMEOUT)

nbval: $(STAMP)  ## Run every notebook with nbval (lax: outputs are not compared)
ifeq ($(NOTEBOOKS),)
	@echo "nbval: no notebooks/*.ipynb yet, nothing to run"
else
	$(NB_ENV) $(PY) -m pytest --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=$(CELL_TIMEOUT) --timeout=$(TEST_TIMEOUT) \
	  $(NOTEBOOKS)
endif

status: $(STAMP)  ## Write the environment table of the status page
	$(SCRIPT_ENV) $(PY) tools/status.py --out $(STATUS_ENV)

book: status  ## Execute the notebooks and build the HTML book in _build/html
	@rm -rf $(REPORTS)
	@$(NB_ENV) $(VENV)/bin/jupyter-book build . --all -W -n --keep-going \
	  || { echo; echo "make book: FAILED (warnings are errors)."; \
	       if [ -d $(REPORTS) ]; then \
	         echo "Execution reports of failing notebooks:"; \
	         find $(REPORTS) -name '*.err.log' -printf '  %p\n'; \
	       fi; exit 1; }
	@echo "make book: open _build/html/index.html"

lint: $(STAMP)  ## ruff check and format check (Python files and notebooks)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/python tools/architecture.py --check

format: $(STAMP)  ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

bench: $(STAMP)  ## Run every benchmarks/*.py in turn
ifeq ($(BENCHMARKS),)
	@echo "bench: no benchmarks/*.py yet"
else
	@for f in $(BENCHMARKS); do echo "== $$f"; $(SCRIPT_ENV) $(PY) $$f; done
endif

clean:  ## Remove the build and caches (keeps .venv)
	rm -rf _build .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print \
	  | xargs rm -rf

distclean: clean  ## Also remove .venv
	rm -rf $(VENV)
