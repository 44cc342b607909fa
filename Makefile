# frugalserve developer commands. `make test` and `make demo` work on a fresh machine: each sets
# up what it needs (a venv with torch==2.13.0 first, then the package; system services via apt).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MYPY_STRICT := frugalserve/api frugalserve/operator frugalserve/ledger frugalserve/pricing
# Fast layers for development: `make test-fast` runs in seconds.
PYTEST_FAST := -m unit

HELM_VENV := .venv-helm
# The Helm library (helm-sdkpy) needs Python 3.12, which pyenv provides here.
PY312 = $$(ls $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)

.PHONY: install system-deps lint test test-fast demo crds golden

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(HELM_VENV)/.requirements: tests/chart/requirements-helm.txt
	test -x $(HELM_VENV)/bin/python || $(PY312) -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/pip install -q -r tests/chart/requirements-helm.txt
	cp tests/chart/requirements-helm.txt $@

# redis-server (ledger tests) and prometheus (operator cost timer tests), from Debian.
system-deps:
	@command -v redis-server >/dev/null && command -v prometheus >/dev/null || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server prometheus; }

lint: install
	$(BIN)/ruff check frugalserve tests bench
	$(BIN)/mypy --strict $(MYPY_STRICT)

test: install system-deps lint $(HELM_VENV)/.requirements
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q $(PYTEST_FAST)

crds: install
	$(BIN)/frugalserve crds

golden: install
	FRUGALSERVE_REGEN=1 $(BIN)/pytest -q tests/unit/test_render.py -k golden

# Local mode: a local Ray, the quickstart's models and tenants, an OpenAI-compatible URL.
demo: install
	$(BIN)/frugalserve serve -f examples/quickstart.yaml --state-dir .frugalserve
