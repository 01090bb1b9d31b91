"""Checks a sweep's outputs (called by the cli_sweep CTest): the naive frontier is monotone (its
feasible (M, N) set only grows with P and its codes do not depend on P), the AXE frontier is monotone
up to the greedy algorithm's noise, every frontier point is certified, SVGs are well-formed XML and
render to PNG (rsvg-convert) with visible content."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

out = sys.argv[1]
sweep = json.load(open(os.path.join(out, "sweep.json")))
front = {int(p): m for p, m in sweep["frontier"].items()}
ps = sorted(front)
for method in ("naive", "axe", "ep-init"):
    q = [front[p][method]["quality"] for p in ps if method in front[p]]
    assert len(q) >= 2, (method, q)
    for a, b in zip(q, q[1:]):
        if method == "naive":
            assert b <= a + 1e-12, f"naive frontier not monotone: {q}"
        else:
            # AXE/EP-init at a larger P is a different greedy run, not a relaxation of the smaller
            # one, so tiny inversions are possible; a large one would be a bug.
            assert b <= a * 1.02 + 1e-9, f"{method} frontier worsens with more bits: {q}"
for p in ps:
    for method, pt in front[p].items():
        assert pt["certified"], (p, method)
        # Certified at target P: the codes need at most P bits (monolithic here), and the outer
        # accumulator never needs fewer bits than the inner one.
        assert pt["min_accumulator_bits"] <= p, (p, method, pt["min_accumulator_bits"])
        assert pt["min_outer_accumulator_bits"] >= pt["min_accumulator_bits"], (p, method, pt)
both = [p for p in ps if "naive" in front[p] and "axe" in front[p]]
# At the tightest P no (M, N) has P* <= P for w2 (K = 172: P*(3, 4) = 15), so naive is infeasible;
# AXE is not.
assert "naive" not in front[ps[0]], f"naive should be infeasible at the tightest P={ps[0]}: {front[ps[0]]}"
assert "axe" in front[ps[0]], f"AXE should be feasible at the tightest P={ps[0]}"
tight = both[0]
assert front[tight]["axe"]["quality"] < front[tight]["naive"]["quality"], \
    f"AXE should beat naive at P={tight}: {front[tight]['axe']['quality']} vs {front[tight]['naive']['quality']}"
for name in ("pareto.svg", "accumulator_bits.svg"):
    path = os.path.join(out, name)
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), name
    png = path[:-4] + ".png"
    subprocess.run(["rsvg-convert", path, "-o", png], check=True)
    assert os.path.getsize(png) > 5000, f"{png} looks empty"
print("sweep outputs OK:", ps)
