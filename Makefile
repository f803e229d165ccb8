# drt: `make demo` runs the main job, `make test` runs ruff, mypy and the tests.
# Both create .venv and install everything on first use (idempotent).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch installs from local disk on the project's machines; pick another build here.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.drt-installed

.PHONY: install demo test lint typecheck browser clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev,lightning]"
	touch $(STAMP)

demo: install
	$(BIN)/drt demo

lint: install
	$(BIN)/ruff check src tests benchmarks

typecheck: install
	$(BIN)/mypy

# The report's headless-browser test needs Debian's chromium; installed where we can (root on
# Debian), otherwise that one test is skipped with the reason shown.
browser:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test will be skipped"; fi

test: lint typecheck browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache .mypy_cache
