# The ordermesh image: one image for every service; the command picks which run
# (`ordermesh run command`, `ordermesh run projections query`, ...). compose.yaml
# builds it once as ordermesh:local.
#
#   docker build -t ordermesh:local .
#   docker run --rm ordermesh:local --help

# Python 3.11 (the project's floor) on Debian 13; the patch release and security
# updates follow the tag.
ARG PYTHON_IMAGE=python:3.11-slim-trixie

# --- build: a virtual environment with ordermesh and its dependencies ---------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/ordermesh
WORKDIR /src

# Dependencies first, read from pyproject.toml, so that this layer is rebuilt only
# when they change, not at every change of the code. Every dependency ships wheels
# for this platform: no compiler is needed.
COPY pyproject.toml ./
RUN python -c "import tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && /opt/ordermesh/bin/pip install --requirement requirements.txt

# Then the project itself (.dockerignore keeps tests, docs and local state out).
COPY . .
RUN /opt/ordermesh/bin/pip install --no-deps . \
 && /opt/ordermesh/bin/ordermesh --help > /dev/null

# --- runtime --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="ordermesh" \
      org.opencontainers.image.description="Event-sourced order system over NATS"

# A fixed, unprivileged user; /data (SQLite read models, the saga inbox) belongs to it,
# so a named volume mounted there starts out writable by it.
RUN groupadd --system --gid 10001 ordermesh \
 && useradd --system --uid 10001 --gid ordermesh --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin ordermesh \
 && mkdir -p /data \
 && chown ordermesh:ordermesh /data

COPY --from=build /opt/ordermesh /opt/ordermesh

ENV PATH=/opt/ordermesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORDERMESH_DATA_DIR=/data \
    ORDERMESH_METRICS_HOST=0.0.0.0 \
    ORDERMESH_METRICS_PORT=9464 \
    LOG_FORMAT=json

WORKDIR /data
VOLUME ["/data"]
USER ordermesh:ordermesh

# /metrics, /healthz and /readyz of the process.
EXPOSE 9464

# Ready = its services have subscribed and answer. The slim image has no curl: the
# standard library asks (urlopen raises on any status other than 2xx).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('ORDERMESH_METRICS_PORT', '9464'), timeout=4)"]

# `ordermesh run` stops cleanly on SIGTERM (docker stop), as on Ctrl-C.
ENTRYPOINT ["ordermesh"]
# Every service in one container against NATS at ORDERMESH_NATS_URL; compose.yaml runs
# them as separate containers instead.
CMD ["run", "command", "relay", "projections", "query", "saga"]
