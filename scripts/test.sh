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
# Opt-in (CI sets it): ASan + UBSan build of the core, formats, wire and server suites (the
# `asan` preset), run directly with the preset's sanitizer settings; core's big-layer cases and
# the 20,000-file retention case (label slow) stay in the Release run. The server suite took 45 s
# (22 s user + 11 s sys) under ASan on 2 cores at load ~1.5 (2026-11-27).
if [ "${AXEQ_TEST_ASAN:-0}" = 1 ]; then
  cmake --preset asan >/dev/null
  cmake --build build-asan -j "$(nproc)" --target core_test formats_test wire_test server_test axeq-server
  export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  build-asan/core/core_test --gtest_brief=1 --gtest_filter='-*Big*:*Large*'
  build-asan/formats/formats_test --gtest_brief=1
  build-asan/proto/wire_test --gtest_brief=1
  AXEQ_SERVER_BIN=build-asan/server/axeq-server GRPC_DNS_RESOLVER=native build-asan/tests/server_test --gtest_brief=1 \
    --gtest_filter='-ServerRetention.*'
fi
# Opt-in (CI sets it): libFuzzer targets (fuzz/run.sh) for AXEQ_FUZZ_SECONDS each.
if [ "${AXEQ_TEST_FUZZ:-0}" = 1 ]; then
  ./fuzz/run.sh
fi
# Opt-in: build the container image with podman and quantize a layer through it.
if [ "${AXEQ_CONTAINER_TEST:-0}" = 1 ]; then
  ./deploy/build-image.sh localhost/axeq-server:test
  ./deploy/smoke-test.sh localhost/axeq-server:test
fi
