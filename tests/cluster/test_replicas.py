"""Three real axeq-server replicas on 127.0.0.1 behind one gRPC target, driven by the CLI
(`axeq --server ipv4:127.0.0.1:A,127.0.0.1:B,127.0.0.1:C quantize ...`) on the 35 linear layers of
stories260K: client-side round_robin spreads the layers (every replica runs at least a fifth of
them, read from each replica's /metrics) with results bit-identical to the embedded engine
(certificate digests); and a kill -9 of one replica while the job is in flight loses no layer
(resubmitted elsewhere under the same idempotency key), still identical to embedded.

Environment: AXEQ_SERVER_BIN, AXEQ_CLI_BIN, AXEQ_CHECKPOINT (stories260K.bin)."""
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

SERVER = os.environ.get("AXEQ_SERVER_BIN", os.path.join(os.environ.get("AXEQ_BUILD_DIR", "build"), "server", "axeq-server"))
CLI = os.environ.get("AXEQ_CLI_BIN", os.path.join(os.environ.get("AXEQ_BUILD_DIR", "build"), "client", "axeq"))
CHECKPOINT = os.environ.get("AXEQ_CHECKPOINT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "data", "stories260K.bin"))
# One job per layer: a fixed activation range (the default, auto, runs up to three per layer).
FLAGS = ["--acc-bits", "16", "--tile", "32", "--algorithm", "gpfq", "--act-range", "output"]
DIGEST = re.compile(r'"weights_sha256": "([0-9a-f]{64})"')


class Replica:
    """One axeq-server: one worker, one engine thread, /metrics on its own port."""

    def __init__(self, name):
        self.name = name
        self.proc = subprocess.Popen([SERVER, "--insecure", "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
                                      "--workers", "1", "--compute-threads", "1", "--drain-delay-seconds", "0",
                                      "--replica-id", name], stderr=subprocess.PIPE, text=True)
        first = self.proc.stderr.readline()
        if not first.startswith("{"):
            raise RuntimeError(f"{name} did not start: {first}")
        info = json.loads(first)
        self.port, self.metrics_port = info["port"], info["metrics_port"]
        self.events = []  # job events from its log
        threading.Thread(target=self._drain_log, daemon=True).start()

    def _drain_log(self):
        for line in self.proc.stderr:
            self.events.append(line)

    def succeeded(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        m = re.search(r'^axeq_jobs_total\{[^}]*state="JOB_STATE_SUCCEEDED"[^}]*\} ([0-9.e+]+)$', text, re.M)
        return int(float(m.group(1))) if m else 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


class Replicas(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.model, cls.cal = os.path.join(cls.tmp, "l.st"), os.path.join(cls.tmp, "c.st")
        subprocess.run([CLI, "llama2c-capture", "--checkpoint", CHECKPOINT, "--out-model", cls.model,
                        "--out-calibration", cls.cal, "--sequences", "2", "--length", "48"], check=True, stdout=subprocess.DEVNULL)
        cls.embedded = cls.digests(cls.quantize([], "embedded.st"))
        assert len(cls.embedded) == 35, len(cls.embedded)

    @classmethod
    def quantize(cls, server_args, out):
        r = subprocess.run([CLI, *server_args, "quantize", "--model", cls.model, "--calibration", cls.cal, *FLAGS,
                            "--out", os.path.join(cls.tmp, out), "--quiet", "--json"], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"axeq quantize failed ({r.returncode}): {r.stderr[-2000:]}")
        return r.stdout

    @staticmethod
    def digests(text):
        return DIGEST.findall(text)

    def setUp(self):
        self.replicas = [Replica(f"r{i}") for i in range(3)]
        self.target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in self.replicas)

    def tearDown(self):
        for r in self.replicas:
            r.stop()

    def test_round_robin_spreads_layers_bit_identical(self):
        out = self.quantize(["--server", self.target, "--concurrency", "6"], "remote.st")
        self.assertEqual(self.digests(out), self.embedded)
        counts = [r.succeeded() for r in self.replicas]
        self.assertEqual(sum(counts), 35, counts)
        for r, n in zip(self.replicas, counts):
            self.assertGreaterEqual(n, 35 / 5, f"replica {r.name} ran {n} of 35 layers: {counts}")

    def test_kill_one_replica_mid_job_loses_nothing(self):
        victim = self.replicas[1]
        cmd = [CLI, "--server", self.target, "--concurrency", "6", "quantize", "--model", self.model,
               "--calibration", self.cal, *FLAGS, "--out", os.path.join(self.tmp, "killed.st"), "--quiet", "--json"]
        job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Kill the victim as soon as it has admitted a layer (its first job event).
        end = time.time() + 60
        while not any('"job"' in line for line in victim.events) and time.time() < end and job.poll() is None:
            time.sleep(0.002)
        in_flight = job.poll() is None
        victim.proc.send_signal(signal.SIGKILL)
        out, err = job.communicate(timeout=600)
        self.assertTrue(in_flight, "the job finished before the replica could be killed")
        self.assertEqual(job.returncode, 0, err[-2000:])
        self.assertEqual(self.digests(out), self.embedded)
        survivors = sum(r.succeeded() for r in self.replicas if r is not victim)
        self.assertGreaterEqual(survivors, 35 - sum('ended: OK' in line for line in victim.events))


if __name__ == "__main__":
    unittest.main()
