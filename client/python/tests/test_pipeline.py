"""The stories260K example end to end (examples/stories260k.py --quick): the block-wise pipeline
quantizes every linear layer through a real server and what must hold holds: every certificate
verifies client-side against the configuration; W8A8 at P=32 stays within 2% of float perplexity
and close to the float model on in-domain text; AXE at the tightest P beats the naive bit-width
and EP-init baselines at the same P on perplexity and on KL divergence. Also the helpers the other
pipeline tests share: where the build tree, the server binary and the data are."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BUILD = os.path.abspath(os.environ.get("AXEQ_BUILD_DIR") or os.path.join(ROOT, "build"))
DATA = os.environ.get("AXEQ_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")
if os.path.isdir(os.path.join(BUILD, "python")) and not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.join(BUILD, "python"))


def server_binary() -> str:
    return os.environ.get("AXEQ_SERVER_BIN") or os.path.join(BUILD, "server", "axeq-server")


def start_server(*extra):
    """Starts axeq-server on a free loopback port; returns (process, port). The log is drained."""
    proc = subprocess.Popen([server_binary(), "--address", "127.0.0.1:0", "--insecure", "--drain-delay-seconds", "0",
                             *extra], stderr=subprocess.PIPE, text=True)
    port = json.loads(proc.stderr.readline())["port"]
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, port


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)


def stories260k_path() -> str:
    p = os.path.join(DATA, "stories260K", "stories260K.bin")
    return p if os.path.exists(p) else os.path.join(ROOT, "examples", "data", "stories260K.bin")


class PipelineTest(unittest.TestCase):
    def test_stories260k_quick(self):
        out = os.path.join(tempfile.mkdtemp(), "rows.json")
        env = dict(os.environ, AXEQ_BUILD_DIR=BUILD)
        subprocess.run([sys.executable, os.path.join(ROOT, "examples", "stories260k.py"), "--quick", "--json", out],
                       check=True, timeout=600, env=env)
        rows = {r["name"]: r for r in json.load(open(out))}
        base = rows["float"]
        self.assertAlmostEqual(base["ppl"], 121.0, delta=6.0)  # the data README's "about 118"
        self.assertAlmostEqual(base["kld"], 0.0, delta=1e-9)
        self.assertEqual(base["top1_agreement"], 100.0)
        for name, r in rows.items():
            for key in ("name", "ppl", "kld", "top1_agreement", "ppl_ratio", "sparsity", "verified", "seconds", "layers"):
                self.assertIn(key, r, name)
            if name != "float":
                self.assertEqual(r["verified"], "all SAFE", name)
                self.assertEqual(r["layers"], 35, name)
        w8 = rows["W8A8, P=32 (OPTQ)"]
        self.assertLess(w8["ppl"], base["ppl"] * 1.02)
        self.assertLess(w8["kld"], 0.05)
        self.assertGreater(w8["top1_agreement"], 85.0)
        axe = rows["W4A8 OPTQ+AXE, P=16"]
        for other in ("naive bit widths, P=16", "EP-init (OPTQ), P=16"):
            self.assertLess(axe["ppl"], rows[other]["ppl"], other)
            self.assertLess(axe["kld"], rows[other]["kld"], other)
        self.assertLess(w8["kld"], axe["kld"])
        self.assertLessEqual(axe["min_po"], 16)


if __name__ == "__main__":
    unittest.main()
