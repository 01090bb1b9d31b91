#!/usr/bin/env bash
# Generates the axeq.v1 Python stubs into a package tree with Debian's protoc and
# grpc_python_plugin (python3-grpc-tools bundles a 2017 protoc; ../shared/NOTES.md). CMake's
# axeq_python target uses it for <build>/python; `pip install client/python` does not need it
# (setup.py generates the stubs at build time).
# Usage: client/python/generate.sh [OUT_DIR]   (default: client/python, for PYTHONPATH=client/python)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here}
mkdir -p "$out/axeq/v1"
protoc --proto_path="$here/../../proto" --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin axeq/v1/axeq.proto
touch "$out/axeq/v1/__init__.py"
