#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the fast test suite. Slow tests: AXEQ_TEST_ALL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ "${AXEQ_TEST_ALL:-0}" = 1 ]; then
  ctest --test-dir build --output-on-failure -j "$(nproc)"
else
  ctest --test-dir build --output-on-failure -j "$(nproc)" -LE slow
fi
# Opt-in: build the container image with podman and quantize a layer through it.
if [ "${AXEQ_CONTAINER_TEST:-0}" = 1 ]; then
  ./deploy/build-image.sh localhost/axeq-server:test
  ./deploy/smoke-test.sh localhost/axeq-server:test
fi
