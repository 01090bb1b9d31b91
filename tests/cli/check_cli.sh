#!/usr/bin/env bash
# The CLI against damaged and hostile RESULT files, pinned datapaths, and the integer datapath
# (issues 9, 10, 12). Usage: check_cli.sh AXEQ_BIN CHECKPOINT
set -euo pipefail
AXEQ=$1
CKPT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
MUT="/usr/bin/python3 $HERE/mutate_result.py"
d=$(mktemp -d)
trap 'rm -rf $d' EXIT
expect_rc() {  # expect_rc RC WHAT CMD...: the command must exit with RC and must not crash
  local want=$1 what=$2
  shift 2
  set +e
  "$@" > "$d/out" 2> "$d/err"
  local rc=$?
  set -e
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL ($what): exit $rc, want $want"; cat "$d/out" "$d/err"; exit 1
  fi
}
$AXEQ llama2c-capture --checkpoint "$CKPT" --out-model $d/l --out-calibration $d/c --sequences 2 --length 48 >/dev/null
$AXEQ quantize --model $d/l --calibration $d/c --acc-bits 16 --tile 32 --out $d/axe.st --quiet >/dev/null
$AXEQ quantize --model $d/l --calibration $d/c --acc-bits 20 --group-size 16 --out $d/group.st --quiet >/dev/null
$AXEQ quantize --model $d/l --calibration $d/c --acc-bits 12 --no-axe --out $d/base12.st --quiet >/dev/null

# verify: exit codes, pinned datapaths, forged and incomplete files (issue 10, points 1-2, 4).
expect_rc 0 "honest file verifies" $AXEQ verify $d/axe.st
expect_rc 0 "pinned to its own datapath" $AXEQ verify $d/axe.st --acc-bits 16 --tile 32 --act-bits 8 --unsigned-inputs --weight-bits 4
expect_rc 1 "pinned to another P" $AXEQ verify $d/axe.st --acc-bits 14
grep -q "expected accumulator_bits = 14" $d/out
expect_rc 1 "pinned monolithic vs tiled" $AXEQ verify $d/axe.st --tile 0
expect_rc 1 "uncertified codes at P=12" $AXEQ verify $d/base12.st
$MUT drop-certificate $d/axe.st $d/nocert.st
expect_rc 1 "a layer without a certificate" $AXEQ verify $d/nocert.st
grep -q "missing (every quantized layer must have one)" $d/out
$MUT forge-input-bits $d/axe.st $d/forged.st
expect_rc 1 "input_bits 62 forgery" $AXEQ verify $d/forged.st
$MUT huge-shape $d/axe.st $d/huge.st
expect_rc 2 "overflowing shape" $AXEQ verify $d/huge.st
grep -q "overflows" $d/err
expect_rc 2 "not a file" $AXEQ verify $d/does-not-exist.st

# Missing fields are a clear error naming the layer and field in every reader (issue 9).
$MUT drop-scales $d/axe.st $d/noscales.st
for cmd in "simulate $d/noscales.st --calibration $d/c" "llama2c-eval --checkpoint $CKPT --result $d/noscales.st --sequences 1 --length 16"; do
  expect_rc 1 "missing .scales: $cmd" $AXEQ $cmd
  grep -q "layers.0.attention.wk: .scales: missing" $d/err
done
expect_rc 1 "verify reports the malformed layer" $AXEQ verify $d/noscales.st
grep -q "MALFORMED" $d/out

# Group-scaled results written with the old "axeq.group_size = 0" evaluate like the CLI's (issue 9).
$MUT v1-group-zero $d/group.st $d/group_v1.st
$AXEQ llama2c-eval --checkpoint "$CKPT" --result $d/group.st --sequences 2 --length 32 | tail -1 > $d/a
$AXEQ llama2c-eval --checkpoint "$CKPT" --result $d/group_v1.st --sequences 2 --length 32 | tail -1 > $d/b
cmp $d/a $d/b
$AXEQ simulate $d/group_v1.st --calibration $d/c --fail-on-overflow >/dev/null

# The integer datapath (issue 12): certified codes never overflow and score as fake quantization;
# uncertified codes at a narrow P overflow.
$AXEQ llama2c-eval --checkpoint "$CKPT" --result $d/axe.st --sequences 2 --length 32 > $d/fake
$AXEQ llama2c-eval --checkpoint "$CKPT" --result $d/axe.st --sequences 2 --length 32 --integer > $d/int
grep -q "^integer datapath: 0 of [1-9][0-9]* dot products overflowed" $d/int
fake=$(sed -n 's/quantized model:  perplexity \([0-9.]*\).*/\1/p' $d/fake)
int=$(sed -n 's/quantized model:  perplexity \([0-9.]*\).*/\1/p' $d/int)
/usr/bin/python3 -c "import sys; f, i = float('$fake'), float('$int'); sys.exit(0 if abs(f - i) <= 2e-3 * f else 1)" \
  || { echo "integer ppl $int differs from fake $fake"; exit 1; }
$AXEQ llama2c-eval --checkpoint "$CKPT" --result $d/base12.st --sequences 2 --length 32 --integer > $d/int12
grep -q "^integer datapath: [1-9][0-9]* of" $d/int12
expect_rc 1 "integer mode needs per-channel scales" $AXEQ llama2c-eval --checkpoint "$CKPT" --result $d/group.st --integer --sequences 1 --length 8
echo "all CLI checks passed"
