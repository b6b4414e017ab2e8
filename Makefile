# Two commands on a fresh machine (Python 3.11+):
#   make book   set up .venv, build the site into _build/html
#   make test   set up .venv, run bnlib's tests, execute every notebook (nbval), build the site
#               strictly, and check it in headless Chromium
# Both are idempotent: .venv is only (re)installed when requirements.txt, pyproject.toml,
# setup.py or the compiled loops' source (bnlib/torch/_fused.cpp) change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))
# nbval runs notebooks in parallel, each whole on one worker (each pins one torch thread).
NBVAL_WORKERS ?= 2
NBVAL := $(BIN)/python -m pytest --nbval --nbval-current-env -p no:cacheprovider \
	-o filterwarnings= -n $(NBVAL_WORKERS) --dist loadscope
# Private IPython profiles: a reader's own startup files never run, and the second pass adds
# tests/rounding_noise.py as a startup file.
IPYTHON_PLAIN := _build/ipython/plain
IPYTHON_NOISE := _build/ipython/noise

.PHONY: setup book test unit notebooks site browser execute setup-cells clean test-compiled

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml setup.py bnlib/torch/_fused.cpp
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

test: unit notebooks site browser

unit: setup
	$(BIN)/python -m pytest tests --ignore=tests/site

# The opt-in compiled path's parity tests (torch.compile: about a minute); not part of test.
test-compiled: setup
	BNLIB_TEST_COMPILED=1 $(BIN)/python -m pytest tests/torch/test_compiled.py

# Two strict passes over every notebook: as a reader's machine runs it, then with rounding
# noise (a few ulp on every parameter after every optimizer step): every stored output must
# come out the same, so it is what another CPU prints too.
notebooks: setup
	rm -rf _build/ipython
	mkdir -p $(IPYTHON_PLAIN) $(IPYTHON_NOISE)/profile_default/startup
	cp tests/rounding_noise.py $(IPYTHON_NOISE)/profile_default/startup/
	@echo "nbval (strict): every stored output"
	IPYTHONDIR=$(CURDIR)/$(IPYTHON_PLAIN) $(NBVAL) $(NOTEBOOKS)
	@echo "nbval (strict) with rounding noise: every stored output survives another CPU's rounding"
	IPYTHONDIR=$(CURDIR)/$(IPYTHON_NOISE) BNLIB_ROUNDING_NOISE=1 $(NBVAL) $(NOTEBOOKS)

site: setup
	$(BIN)/jupyter-book build . -W -n --keep-going

# Every page of the built site in headless Chromium over 127.0.0.1, network blocked
# (skipped, with the reason shown, where no Chromium is installed; .ci/run installs it).
browser: setup
	$(BIN)/python -m pytest tests/site
	@cat _build/screenshots/site_check.json 2>/dev/null; echo

# For authors: give every chapter the standard first cell (installs bnlib outside the
# repository, e.g. in Colab; see _config.yml's repository.url), then re-run every notebook top
# to bottom in a fresh kernel and store its outputs.
setup-cells: setup
	$(BIN)/python scripts/setup_cell.py $(NOTEBOOKS)

execute: setup-cells
	mkdir -p $(IPYTHON_PLAIN)
	printf '%s\n' $(NOTEBOOKS) | IPYTHONDIR=$(CURDIR)/$(IPYTHON_PLAIN) OMP_NUM_THREADS=1 \
		xargs -P $(NBVAL_WORKERS) -I{} sh -c \
		'echo "executing $$1"; $(BIN)/jupyter execute --inplace "$$1" || exit 255' _ {}

clean:
	rm -rf _build
