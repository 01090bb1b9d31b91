"""`pip install client/python` the way a fresh Debian machine can (no package index, no build
isolation, Debian's python3-pip/setuptools/wheel): into a virtual environment that sees the system
packages, from a copy of the source tree holding only client/python and proto/ (no generated stubs:
the build hook generates them). The installed package imports from elsewhere with its stubs, its
docstring names only modules that exist, and torch and tqdm are declared as optional extras."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from test_pipeline import ROOT


class PackagingTest(unittest.TestCase):
    def test_pip_install_into_a_fresh_environment(self):
        tmp = tempfile.mkdtemp()
        try:
            src = os.path.join(tmp, "src")
            shutil.copytree(os.path.join(ROOT, "client", "python"), os.path.join(src, "client", "python"),
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "v1"))
            shutil.copytree(os.path.join(ROOT, "proto"), os.path.join(src, "proto"))
            self.assertFalse(os.path.exists(os.path.join(src, "client", "python", "axeq", "v1")))
            venv = os.path.join(tmp, "venv")
            subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv], check=True)
            py = os.path.join(venv, "bin", "python")
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            r = subprocess.run([py, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--quiet",
                                os.path.join(src, "client", "python")], env=env, capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            probe = (
                "import importlib, json, re, axeq, axeq.v1.axeq_pb2 as pb, importlib.metadata as md\n"
                "mods = set(re.findall(r'axeq\\.(\\w+)', axeq.__doc__))\n"
                "missing = [m for m in mods if importlib.util.find_spec('axeq.' + m) is None]\n"
                "meta = md.metadata('axeq')\n"
                "print(json.dumps({'file': axeq.__file__, 'missing': missing, 'mods': sorted(mods),\n"
                "  'extras': meta.get_all('Provides-Extra'), 'requires': meta.get_all('Requires-Dist'),\n"
                "  'client': hasattr(axeq, 'Client'), 'pb': pb.DESCRIPTOR.package}))\n")
            out = subprocess.run([py, "-c", probe], env=env, cwd=tmp, capture_output=True, text=True, check=True).stdout
            import json
            info = json.loads(out.strip().splitlines()[-1])
            self.assertTrue(info["file"].startswith(venv), info["file"])
            self.assertEqual(info["missing"], [], info)
            self.assertIn("pipeline", info["mods"])
            self.assertTrue(info["client"])
            self.assertEqual(info["pb"], "axeq.v1")
            self.assertEqual(sorted(info["extras"]), ["progress", "torch"])
            self.assertTrue(any(re.match(r"torch.*extra == .torch.", q) for q in info["requires"]), info["requires"])
            self.assertFalse(any(q.startswith("torch") and "extra" not in q for q in info["requires"]))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
