# hsmstore: `make run` serves a dev key store, `make test` lints and runs every test.
# Both install what is missing first: Debian's softhsm2 and opensc, a venv, the package.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint proto bench bench-scale soak bench-ceiling bench-half-open fuzz install system-deps clean

# The AWS JSON protocol too (issue 19): boto3 / `aws kms --endpoint-url http://127.0.0.1:4599`.
run: install
	$(BIN)/hsmstore serve --aws-listen 127.0.0.1:4599

test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check hsmstore tests bench
	$(BIN)/ruff format --check hsmstore tests bench
	$(BIN)/mypy
	$(BIN)/mypy --strict bench/*.py
	$(BIN)/mypy --strict tests/fuzz
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/aws_protocol.py
	$(BIN)/python bench/xks.py
	$(BIN)/python bench/asymmetric.py
	$(BIN)/python bench/residency.py
	$(BIN)/python bench/scale.py --keys 2000 --residency wrapped --seconds 5
	$(BIN)/python bench/scale.py --keys 2000 --residency token --seconds 5
	$(MAKE) soak

# Issue 18: N keys (default 1,000,000) made through the service in a wrapped store, resumable (state and
# data dir in .hsmstore/bench-scale/), then the token residency at the largest N SoftHSM2 can hold (50,000).
SCALE_N = $(or $(N),1000000)
bench-scale: install
	$(BIN)/python bench/scale.py --keys $(SCALE_N) --residency wrapped
	$(BIN)/python bench/scale.py --keys $(or $(TOKEN_N),$$(( $(SCALE_N) < 50000 ? $(SCALE_N) : 50000 ))) --residency token

# Mixed load for SOAK_MINUTES (30) with --workers 2: memory, descriptors, errors, audit, metrics (issue 16).
soak: install
	$(BIN)/python bench/soak.py --minutes $(or $(SOAK_MINUTES),30)

# Live CPU of servers that do ever more of a call: what the floor of issue 7 leaves out.
bench-ceiling: install
	$(BIN)/python bench/ceiling.py

# Other callers' GenerateDataKey p50/p99 and health while one client holds 50 half-open streams (issue 14).
bench-half-open: install
	$(BIN)/python bench/half_open.py

# A long fuzzing run against a real server (issue 14): counts by RPC x (code, reason), non-zero on any
# UNKNOWN/INTERNAL/hang. `make test` runs a short one (tests/fuzz/test_fuzz.py).
fuzz: install
	$(BIN)/python -m tests.fuzz.run --requests $(or $(FUZZ_REQUESTS),80000)

install: system-deps $(STAMP)

# softhsm2 (the dev/CI token), opensc (pkcs11-tool, which the tests use to inspect
# the token), nghttp2-client (h2load, the benchmark's load generator), p11-kit and
# p11-kit-modules (a token behind a socket, for the outage tests of issue 17).
system-deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v pkcs11-tool >/dev/null || missing="$$missing opensc"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v p11-kit >/dev/null || missing="$$missing p11-kit"; \
	ls /usr/lib/*/pkcs11/p11-kit-client.so >/dev/null 2>&1 || missing="$$missing p11-kit-modules"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $@

# Regenerate hsmstore/_proto from proto/ (the generated code is committed).
proto: install
	rm -rf hsmstore/_proto/hsmstore
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=hsmstore/_proto \
	  --pyi_out=hsmstore/_proto --grpc_python_out=hsmstore/_proto proto/hsmstore/v1/*.proto
	sed -i 's/^from hsmstore\.v1 import/from hsmstore._proto.hsmstore.v1 import/' hsmstore/_proto/hsmstore/v1/*_grpc.py
	touch hsmstore/_proto/__init__.py hsmstore/_proto/hsmstore/__init__.py hsmstore/_proto/hsmstore/v1/__init__.py

clean:
	rm -rf $(VENV) .hsmstore build *.egg-info
