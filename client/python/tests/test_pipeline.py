"""A small version of the stories260K pipeline (examples/stories260k.py --quick): the PyTorch helper
quantizes every linear layer through a real server true-sequentially, and what must hold holds:
every certificate verifies client-side; W8A8 at P=32 stays within 2% of float perplexity; AXE at the
tightest P beats the naive bit-width and EP-init baselines at the same P."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


class PipelineTest(unittest.TestCase):
    def test_stories260k_quick(self):
        out = os.path.join(tempfile.mkdtemp(), "rows.json")
        subprocess.run([sys.executable, os.path.join(ROOT, "examples", "stories260k.py"), "--quick", "--json", out],
                       check=True, timeout=600)
        rows = {r["name"]: r for r in json.load(open(out))}
        base = rows["float"]["ppl"]
        self.assertAlmostEqual(base, 121.0, delta=6.0)  # the data README's "about 118"
        for name, r in rows.items():
            if name != "float":
                self.assertEqual(r["verified"], "all SAFE", name)
                self.assertEqual(r["layers"], 35, name)
        self.assertLess(rows["W8A8, P=32 (OPTQ)"]["ppl"], base * 1.02)
        axe = rows["W4A8 OPTQ+AXE, P=16"]["ppl"]
        self.assertLess(axe, rows["naive bit widths, P=16"]["ppl"])
        self.assertLess(axe, rows["EP-init (OPTQ), P=16"]["ppl"])
        self.assertLessEqual(rows["W4A8 OPTQ+AXE, P=16"]["min_po"], 16)


if __name__ == "__main__":
    unittest.main()
