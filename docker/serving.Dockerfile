# The serving image: Ray (the release KubeRay runs, RaySpec.ray_version's default) with frugalserve
# installed, for the head and worker pods of every rendered RayService. Build from the
# repository root:
#   docker build -f docker/serving.Dockerfile -t ghcr.io/frugalserve/frugalserve-ray:0.1.0 .
# RAY_VERSION must equal the default `spec.ray.rayVersion` (tests/chart/test_docker.py checks);
# the `-gpu` variant carries CUDA for the NVIDIA GPUs, and torch's CUDA wheel is pinned to the
# version the project is tested with.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG TORCH_VERSION=2.13.0

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu AS build
WORKDIR /tmp/src
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users frugalserve ./frugalserve
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels .

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu
ARG RAY_VERSION
ARG TORCH_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /tmp/wheels /tmp/wheels
# Ray stays the image's own release: pinning it keeps pip from upgrading it for frugalserve.
RUN pip install "torch==${TORCH_VERSION}" "ray[serve]==${RAY_VERSION}" /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels
# The image's `ray` user (uid 1000), as KubeRay expects.
USER 1000
