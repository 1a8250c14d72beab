# The two commands: `make up` runs the service, `make test` runs the suite. Both install what is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080

# Debian packages: Redis for the bus, espeak-ng for speech, Apertium and its pairs for offline MT.
APT_RUNTIME := redis-server espeak-ng sox apertium apertium-eng-spa apertium-eng-cat apertium-en-gl \
	apertium-es-pt apertium-fr-es
APT_TEST := chromium chromium-driver firefox-esr
PIP_EXTRAS := all,gpu,test
# The CPU build of torch (a local wheel on these machines); a bare `torch` would pull a multi-GB CUDA
# build. GPU hosts install their own CUDA torch instead (see compose.yaml).
TORCH_SPEC ?= torch==2.13.0

.PHONY: up test lint bench system-deps system-test-deps venv clean

up: system-deps venv
	$(VENV)/bin/babelroom up --port $(PORT)

test: system-deps system-test-deps venv
	$(PY) -m pytest -ra

lint: venv
	$(VENV)/bin/ruff check gateway pipeline workers benchmarks tests
	$(VENV)/bin/mypy gateway pipeline workers benchmarks

bench: system-deps venv
	$(VENV)/bin/babelroom bench stages --out out/bench
	$(VENV)/bin/babelroom bench scaling --out out/bench

system-deps:
	@./.ci/apt-install $(APT_RUNTIME)

system-test-deps:
	@./.ci/apt-install $(APT_TEST)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[$(PIP_EXTRAS)]'
	touch $@

clean:
	rm -rf $(VENV) out .pytest_cache
