# splitserve image: one entry point (`splitserve`) for the router, workers and KV store.
#   docker build -t splitserve .                                   # CPU (python:3.11-slim, CPU torch)
#   docker build -t splitserve:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# A CUDA base must provide python3 >= 3.11 with venv (ubuntu24.04: python3.12, installed below).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=k8s
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/splitserve \
    PATH=/opt/splitserve/bin:$PATH

# CUDA bases ship no Python; the slim base already has it.
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /src
# torch first, from the index that matches the base (CPU or CUDA), in its own cached layer.
RUN pip install --index-url "$TORCH_INDEX_URL" torch
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY splitserve ./splitserve
COPY engine ./engine
COPY kvstore ./kvstore
COPY router ./router
COPY prefill_worker ./prefill_worker
COPY decode_worker ./decode_worker
COPY kv_transfer ./kv_transfer
COPY simulator ./simulator
COPY bench ./bench
RUN pip install ".[${EXTRAS}]" && rm -rf /src

# Non-root, and the root filesystem may be mounted read-only: caches go to /cache and /tmp,
# which the Helm chart mounts as emptyDir volumes.
RUN groupadd --system --gid 10001 splitserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin splitserve \
    && mkdir -p /cache && chown 10001:10001 /cache
ENV HOME=/tmp XDG_CACHE_HOME=/cache HF_HOME=/cache/huggingface TRITON_CACHE_DIR=/cache/triton
USER 10001:10001
WORKDIR /tmp

# router 8000; kvstore master 50051/9100/5560-5561; node 50061/9101; prefill 50071/9102/5557; decode 50081/9103/5558
EXPOSE 8000 50051 50061 50071 50081 9100 9101 9102 9103
ENTRYPOINT ["splitserve"]
CMD ["--help"]
