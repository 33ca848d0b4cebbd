# hsmstore's dev server in a container: the steps of `make run` (README, "Use it from boto3 / the
# AWS CLI"). A dev SoftHSM2 token and SQLite are made under /data on first start; gRPC on
# 127.0.0.1:50051 and the AWS JSON protocol on 127.0.0.1:4599, plaintext and so loopback only
# (non-loopback without TLS is refused): run it with the host's network, e.g.
#   docker build -t hsmstore . && docker run --rm --network host hsmstore
# then point boto3 or `aws kms --endpoint-url http://127.0.0.1:4599` at it with the local test key.
FROM python:3.11-slim-bookworm

# `make system-deps`: softhsm2 (the dev token), opensc, nghttp2-client, p11-kit; make itself.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
       make softhsm2 opensc nghttp2-client p11-kit p11-kit-modules \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/hsmstore
COPY . .
# `make install`: the venv and the package (the system packages above are found, none installed).
RUN make install PYTHON=python3

ENV HSMSTORE_DATA_DIR=/data
VOLUME /data
EXPOSE 50051 4599
STOPSIGNAL SIGTERM
# `make run`'s command, run directly so that SIGTERM reaches the server (a graceful stop).
CMD [".venv/bin/hsmstore", "serve", "--aws-listen", "127.0.0.1:4599"]
