# One image for the gateway and every worker kind; compose.yaml picks the command.
# The default torch wheel from PyPI is a CUDA build: the GPU engines (transformers Whisper, NLLB,
# MMS-TTS) run on it. CTranslate2 (faster-whisper) also runs where the host has CUDA 12 libraries.
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng sox apertium apertium-eng-spa apertium-eng-cat \
      apertium-en-gl apertium-es-pt apertium-fr-es \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY pipeline pipeline
COPY workers workers
COPY benchmarks benchmarks
# pipecat-ai only for the Smart Turn model file it ships (end-of-turn detection): none of its dependencies.
RUN pip install '.[all,gpu]' \
    && pip install --no-deps 'pipecat-ai==1.14.0'

EXPOSE 8080
CMD ["babelroom", "gateway", "--port", "8080"]
