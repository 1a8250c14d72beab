# One Dockerfile for Janus, the gateway and every worker kind; compose.yaml picks the command and the profile.
# EXTRAS=all (the CPU profile, Janus and the gateway): the offline engines, no torch. EXTRAS=all,gpu (the GPU
# profile) adds torch (PyPI's default wheel is a CUDA build) and transformers for the GPU engines.
# BASE: the official image by default; `make image-test` passes a locally made one (no registry there).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

# Debian stable's own versions: the release pins them, and its security updates should come in with a rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends janus libjs-janus-gateway libjs-webrtc-adapter \
      espeak-ng sox apertium apertium-eng-spa apertium-eng-cat \
      apertium-en-gl apertium-es-pt apertium-fr-es libgl1 libglib2.0-0 coturn \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The dependencies in a layer of their own (the package folders and README empty for now), so that a change to
# the code or the README reinstalls only the project. pipecat-ai only for the Smart Turn model file it ships
# (end-of-turn detection): none of its dependencies. The ranges are in pyproject.toml.
COPY pyproject.toml ./
# Declared here, not above: a build argument is part of every later step's cache key, and the apt layer is the
# same for both images.
ARG EXTRAS=all,gpu
# hadolint ignore=DL3013
RUN mkdir babelroom gateway pipeline workers benchmarks && touch README.md \
    && pip install --no-cache-dir ".[${EXTRAS}]" \
    && pip install --no-cache-dir --no-deps 'pipecat-ai==1.14.0'
COPY README.md ./
COPY babelroom babelroom
COPY gateway gateway
COPY pipeline pipeline
COPY workers workers
COPY benchmarks benchmarks
RUN pip install --no-cache-dir --no-deps --force-reinstall .

# Not root. /cache (the model cache volume) belongs to this user, so a fresh named volume does too.
RUN useradd --create-home --uid 10001 babelroom && mkdir /cache && chown babelroom /cache
USER 10001

EXPOSE 8080
CMD ["babelroom", "gateway", "--port", "8080"]
