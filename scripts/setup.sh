#!/usr/bin/env bash
# Installs the Debian 12 packages axeq builds with (as root, or with sudo), then configures and
# builds a Release tree in build/. Idempotent; used by the README commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="cmake g++ make libeigen3-dev libabsl-dev libssl-dev libxxhash-dev libgtest-dev libgmock-dev libbenchmark-dev libtcmalloc-minimal4 libopenblas0-pthread
      nlohmann-json3-dev libcli11-dev libfmt-dev
      libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc grpc-proto prometheus-cpp-dev openssl
      python3-grpcio python3-protobuf python3-numpy python3-torch python3-tqdm python3-yaml python3-onnx librsvg2-bin"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y $missing
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${AXEQ_CMAKE_ARGS:-}
cmake --build build -j "$(nproc)"
