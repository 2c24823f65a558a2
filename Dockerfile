# megacpp images. Base images are build arguments (see tools/docker-smoke.sh for a machine that cannot
# pull them: it makes a local Debian base with debootstrap).
#
#   docker build --target runtime -t megacpp .        # CUDA build + slim runtime image
#   docker build --target smoke .                     # CPU-only build that runs the tests and a smoke train
#   docker run --gpus all -v $PWD/runs:/work/runs megacpp train recipes/smoke.yaml
ARG CUDA_DEVEL_BASE=nvidia/cuda:13.0.0-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME_BASE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
ARG SMOKE_BASE=debian:bookworm

# ---- build: CUDA 13 development base (Ubuntu 24.04), system packages, megacpp for Hopper ----------
FROM ${CUDA_DEVEL_BASE} AS build
ARG GENCODE="-gencode=arch=compute_90a,code=sm_90a"
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build git pkg-config libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev \
      nlohmann-json3-dev libgtest-dev libbenchmark-dev libopenmpi-dev openmpi-bin libnccl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMEGACPP_CUDA_GENCODE="${GENCODE}" \
    && cmake --build build -j"$(nproc)"

# ---- runtime: the binary, the recipes and the runtime libraries ----------------------------------
FROM ${CUDA_RUNTIME_BASE} AS runtime
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libyaml-cpp0.8 libspdlog1.12 libfmt9 libnccl2 libopenmpi3t64 libstdc++-13-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /work
COPY --from=build /src/build/megacpp /usr/local/bin/megacpp
COPY recipes/ /work/recipes/
ENTRYPOINT ["megacpp"]
CMD ["--help"]

# ---- smoke: CPU-only build on plain Debian/Ubuntu; the tests and a short training run are RUN steps,
# so the image build fails when the smoke fails ------------------------------------------------------
FROM ${SMOKE_BASE} AS smoke
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build git pkg-config ca-certificates python3 \
      libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev \
      libopenmpi-dev openmpi-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN bash tools/setup.sh --cpu-only --no-install
RUN ctest --test-dir build --output-on-failure
RUN ./build/megacpp train recipes/smoke.yaml --set train.steps=60 --set train.eval_every=30 \
      --set train.checkpoint_every=30 --receipts-dir /tmp/smoke-runs \
    && python3 tools/check_smoke_receipt.py /tmp/smoke-runs
