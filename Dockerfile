# hsmstore's dev server in a container: the steps of `make run` (README, "Run it in a container").
# Debian's softhsm2 (the dev token) and opensc/p11-kit as `make system-deps` installs them, a venv with
# `pip install '.[server]'`, and `make run`'s command. A dev SoftHSM2 token and SQLite are made under
# /data on first start. gRPC on 127.0.0.1:50051, the AWS JSON protocol on 127.0.0.1:4599: plaintext
# and so loopback only (hsmstore refuses plaintext elsewhere), so reach it from the host's network or
# from a container sharing its network (examples/compose/docker-compose.yml):
#   docker build -t hsmstore . && docker run --rm --network host hsmstore
#   aws kms list-keys --endpoint-url http://127.0.0.1:4599   (with the local test key, README)
# tests/unit/test_dockerfile.py keeps these steps equal to the Makefile's and lints this file (hadolint).
FROM python:3.11-slim-bookworm

# `make system-deps` without nghttp2-client (h2load: bench only). Unpinned: Debian bookworm's
# security updates are wanted, and a pinned version disappears from the mirror when one lands.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
       softhsm2 opensc p11-kit p11-kit-modules \
    && rm -rf /var/lib/apt/lists/*

# `make install`'s venv and package, without the dev extra: the server only.
ENV VIRTUAL_ENV=/opt/hsmstore/venv
ENV PATH="$VIRTUAL_ENV/bin:$PATH" PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/hsmstore/src
COPY pyproject.toml README.md ./
COPY hsmstore ./hsmstore
# DL3013 asks to pin what pip installs: this is the project itself; pyproject.toml bounds its dependencies.
# hadolint ignore=DL3013
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir '.[server]'

# Not root: the server needs no privilege; /data holds the token, the DB and the audit spool.
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin hsmstore \
    && mkdir -p /data && chown hsmstore:hsmstore /data && chmod 0700 /data
USER 10001
WORKDIR /data
ENV HSMSTORE_DATA_DIR=/data
VOLUME /data
EXPOSE 50051 4599
STOPSIGNAL SIGTERM
# hsmstore status: grpc.health.v1 on the gRPC port, exit 0 once SERVING (token, DB and spool answer).
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
    CMD ["hsmstore", "status", "--timeout", "5"]
# `make run`'s command, run directly (exec form) so that SIGTERM reaches the server: a graceful stop.
CMD ["hsmstore", "serve", "--aws-listen", "127.0.0.1:4599"]
