# The frugalserve operator image: `frugalserve operator` (kopf) on a slim Python, non-root, with
# a read-only root filesystem in mind (the chart mounts /tmp). Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/frugalserve/frugalserve-operator:0.1.0 .
# The operator never runs a model, but frugalserve depends on torch: the CPU build keeps the
# image small. TORCH_VERSION is the version the project is tested with (see the Makefile).
ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY frugalserve ./frugalserve
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
ARG TORCH_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
 && pip install /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent frugalserve
USER 10001:10001
# kopf's liveness endpoint (the chart's operator.healthPort).
EXPOSE 8080
ENTRYPOINT ["frugalserve"]
CMD ["operator"]
