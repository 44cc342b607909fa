# frugalserve developer commands. `make test` and `make demo` work on a fresh machine: each sets
# up what it needs (a venv with torch==2.13.0 first, then the package; system services via apt).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MYPY_STRICT := frugalserve/api frugalserve/operator frugalserve/ledger frugalserve/pricing
# Fast layers for development: `make test-fast` runs in seconds.
PYTEST_FAST := -m unit

.PHONY: install system-deps lint test test-fast demo crds golden

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# redis-server (ledger tests) and prometheus (operator cost timer tests), from Debian.
system-deps:
	@command -v redis-server >/dev/null && command -v prometheus >/dev/null || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server prometheus; }

lint: install
	$(BIN)/ruff check frugalserve tests bench
	$(BIN)/mypy --strict $(MYPY_STRICT)

test: install system-deps lint
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q $(PYTEST_FAST)

crds: install
	$(BIN)/frugalserve crds

golden: install
	FRUGALSERVE_REGEN=1 $(BIN)/pytest -q tests/unit/test_render.py -k golden

demo: install
	$(BIN)/frugalserve render -f examples/quickstart.yaml
