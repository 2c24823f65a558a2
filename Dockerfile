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
# The shared libraries the binary needs beyond glibc, the driver and what the cuDNN runtime base ships
# (cuDNN, cuBLAS): yaml-cpp, spdlog, fmt, NCCL ... — copied rather than named per distribution release.
RUN mkdir -p /runtime-libs && ldd build/megacpp | awk '/=> \//{print $3}' \
    | grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libcuda|libcudnn[^/]*|libcublas[^/]*)\.so' \
    | xargs -r -I{} cp -L {} /runtime-libs/

# ---- runtime: the binary, the recipes and the runtime libraries ----------------------------------
FROM ${CUDA_RUNTIME_BASE} AS runtime
# libstdc++ headers: the default training corpus (recipes/smoke.yaml) is the machine's C++ headers.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libstdc++-13-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /work
COPY --from=build /runtime-libs/ /usr/local/lib/megacpp/
ENV LD_LIBRARY_PATH=/usr/local/lib/megacpp
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
