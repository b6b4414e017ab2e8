# Two commands on a fresh machine (Python 3.11+):
#   make book   set up .venv, build the site into _build/html
#   make test   set up .venv, run bnlib's tests, execute every notebook (nbval), build the site strictly
# Both are idempotent: .venv is only (re)installed when requirements.txt or pyproject.toml change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))
# nbval must pass with one and with two threads (reductions can round differently).
NBVAL_THREADS ?= 1 2

.PHONY: setup book test unit notebooks site execute clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found: $$($(PYTHON) --version 2>&1))."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@# Build matplotlib's font cache now: otherwise the first notebook prints a notice on
	@# stderr, which nbval (strict) counts as a changed output.
	MPLBACKEND=Agg $(BIN)/python -c 'import matplotlib.pyplot'
	touch $(STAMP)

book: setup
	$(BIN)/jupyter-book build . --keep-going
	@echo "Open $(CURDIR)/_build/html/index.html"

test: unit notebooks site

unit: setup
	$(BIN)/python -m pytest tests

notebooks: setup
	@for t in $(NBVAL_THREADS); do \
		echo "nbval (strict) with $$t thread(s)"; \
		OMP_NUM_THREADS=$$t MKL_NUM_THREADS=$$t $(BIN)/python -m pytest --nbval \
			--nbval-current-env -p no:cacheprovider -o filterwarnings= $(NOTEBOOKS) || exit 1; \
	done

site: setup
	$(BIN)/jupyter-book build . -W -n --keep-going

# For authors: re-run every notebook top to bottom in a fresh kernel and store its outputs.
execute: setup
	@for nb in $(NOTEBOOKS); do \
		echo "executing $$nb"; \
		OMP_NUM_THREADS=1 $(BIN)/jupyter execute --inplace $$nb || exit 1; \
	done

clean:
	rm -rf _build
