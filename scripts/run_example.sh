#!/usr/bin/env bash
# The main job: quantize every linear layer of a real pretrained model (stories260K, Llama-2
# architecture, examples/data) end to end with the embedded engine: capture calibration inputs,
# quantize W4A8 with OPTQ + AXE for a 16-bit accumulator, print the result table, verify every
# certificate independently, and compare perplexity with the float model on held-out text.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
AXEQ=build/client/axeq
OUT=${AXEQ_OUT:-out}
mkdir -p "$OUT"
$AXEQ llama2c-capture --checkpoint examples/data/stories260K.bin --tokenizer examples/data/tok512.bin \
  --out-model "$OUT/stories260K.layers.safetensors" --out-calibration "$OUT/stories260K.cal.safetensors" \
  --sequences 16 --length 128 --seed 0
$AXEQ quantize --model "$OUT/stories260K.layers.safetensors" --calibration "$OUT/stories260K.cal.safetensors" \
  --algorithm "${ALGORITHM:-optq}" --weight-bits 4 --act-bits 8 --acc-bits "${ACC_BITS:-16}" --tile "${TILE:-0}" \
  --out "$OUT/stories260K.w4a8.safetensors"
$AXEQ verify "$OUT/stories260K.w4a8.safetensors"
$AXEQ llama2c-eval --checkpoint examples/data/stories260K.bin --result "$OUT/stories260K.w4a8.safetensors" \
  --sequences 8 --length 128 --seed 1000
