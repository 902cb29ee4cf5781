# syntax=docker/dockerfile:1
#
# The ms07 engine image: `ms07 run` as a non-root user on python:3.11-slim.
#
#   docker build -t ms07:0.1.0 .
#   docker run --rm -p 8080:8080 -e MS07_DATABASE_URL=... -e MS07_REDIS_URL=... \
#       -e MS07_API_TOKEN=... ms07:0.1.0
#
# Without MS07_API_TOKEN (or service.api_token_file) the engine refuses to start: a
# container's port is published to the network, and the API must not answer anyone.
#
# The builder stage turns the project and every dependency into wheels (it may compile
# one where no wheel exists for the platform); the final stage installs those wheels
# from a bind mount, so neither compilers nor the wheels themselves end up in the image.
# The embedded PostgreSQL/Redis extra is left out on purpose: a container is given
# MS07_DATABASE_URL and MS07_REDIS_URL. The image ships no pip, setuptools or wheel (nor
# ensurepip's copies): nothing in it can install or build a package at run time.
#
# The base image should be pinned by digest, so that a build is reproducible and a
# re-pushed tag cannot change it. Look the digest up where Docker runs, then pin it here
# (or pass it with --build-arg); renew it with each Debian/Python security update:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> -t ms07:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Only for a dependency without a wheel for this platform; never shipped, so unpinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ms07 ./ms07
COPY runbooks ./runbooks
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/ms07/bin:$PATH \
    HOME=/var/lib/ms07 \
    MS07_STATE_DIR=/var/lib/ms07 \
    TMPDIR=/tmp
# A fixed numeric uid/gid, so that runAsNonRoot can verify it and fsGroup matches.
RUN groupadd --system --gid ${UID} ms07 \
 && useradd --system --uid ${UID} --gid ${UID} --home-dir /var/lib/ms07 --no-create-home \
        --shell /usr/sbin/nologin ms07 \
 && install -d -o ${UID} -g ${UID} -m 0750 /var/lib/ms07
# The bytecode is compiled here, at install time: with a read-only root filesystem the
# interpreter could not write it later. The base image's own pip installs into a venv made
# without one, and is then removed with setuptools, wheel and ensurepip's bundled wheels;
# the last line fails the build if any of them is still importable.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/ms07 \
 && PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 python -m pip --python /opt/ms07/bin/python \
        install --no-index --find-links=/wheels ms07 \
 && python -m pip uninstall -y -q pip setuptools wheel \
 && rm -rf "$(python -c 'import ensurepip, pathlib; print(pathlib.Path(ensurepip.__file__).parent / "_bundled")')" \
 && for py in python /opt/ms07/bin/python; do \
        "$py" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ("pip", "setuptools", "wheel", "pkg_resources")))' \
        || { echo "pip/setuptools/wheel left in $py" >&2; exit 1; }; \
    done \
 && /opt/ms07/bin/ms07 --version
COPY runbooks /usr/share/ms07/runbooks
# Kubernetes mounts writable emptyDirs here and at /tmp; the rest can stay read-only.
VOLUME ["/var/lib/ms07"]
WORKDIR /var/lib/ms07
USER 10001:10001
EXPOSE 8080
# Kubernetes probes /health/live and /health/ready; a Docker HEALTHCHECK would only
# duplicate them (and is ignored by Kubernetes anyway).
HEALTHCHECK NONE
ENTRYPOINT ["ms07"]
CMD ["run"]
