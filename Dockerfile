# syntax=docker/dockerfile:1
# The relay: the binary-capable AudioHook front (python -m audiohook.relay).
# Fargate runs it on arm64 (template.yaml, RelayTaskDefinition), so build with
#   docker build --platform linux/arm64 -t audiohook-relay .
# Settings come from the environment (audiohook.config.Settings.from_env);
# the task definition sets them. Listens on RELAY_PORT (8080).

ARG PYTHON_IMAGE=python:3.12-slim

# ---- build: install the package and its runtime dependencies into a venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY src/audiohook/ src/audiohook/
RUN /opt/venv/bin/pip install ".[relay]"

# ---- runtime: the venv only, run as an unprivileged user
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_PORT=8080
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --no-create-home --shell /usr/sbin/nologin relay
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# The load balancer checks the same endpoint; 503 while draining after SIGTERM.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('RELAY_PORT', '8080'), timeout=2)"]
# SIGTERM (docker stop, ECS) drains: see audiohook/relay.py.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "audiohook.relay"]
