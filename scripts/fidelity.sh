#!/usr/bin/env bash
# Regenerates the tables of docs/fidelity.md: range methods x algorithms x accumulator
# configurations on real GPT-2 layers (bench/fidelity), and axeq's GPFQ+AXE against the reference's
# loop on identical inputs (bench/reference_a2gpfq.py, numpy), and the statistics' error against
# float64. ~2 minutes on 2 cores.
# Env: BUILD_DIR (default build-bench), AXEQ_SHARED_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-bench}
data=${AXEQ_SHARED_DATA:-../shared/data}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DAXEQ_BUILD_BENCH=ON >/dev/null
cmake --build "$build" -j2 --target fidelity >/dev/null
dump=$(mktemp -d)
trap 'rm -rf "$dump"' EXIT
"$build/bench/fidelity" --data "$data" --dump "$dump" > "$dump/ranges.md"
/usr/bin/python3 bench/reference_a2gpfq.py "$dump" > "$dump/reference.md"
/usr/bin/python3 - "$dump" docs/fidelity.md <<'PY'
import re, sys
dump, doc = sys.argv[1], sys.argv[2]
text = open(doc).read()
for name in ("ranges", "reference", "stats"):
    table = open(f"{dump}/{name}.md").read().strip()
    text, n = re.subn(rf"(<!-- {name}:begin -->\n).*?(\n<!-- {name}:end -->)",
                      lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
    assert n == 1, f"marker {name} missing in {doc}"
open(doc, "w").write(text)
PY
echo "docs/fidelity.md updated"
