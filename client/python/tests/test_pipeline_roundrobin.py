"""The Python Client across replicas, with two real axeq-server processes on loopback: one gRPC
target (`ipv4:A,B`) spreads the layers of quantize_many over both under the default round_robin
policy (and over one under pick_first, the control); a failing layer does not discard its
finished siblings; UNAVAILABLE is retried with backoff until a server that starts late (a pod
restart) answers, under one idempotency key; a replica killed mid-job loses no layer."""
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

import numpy as np

from test_pipeline import server_binary, start_server, stop
from axeq import Client, Config, QuantizeManyError, ServerError


def layers(n, seed=0, c=32, k=96, d=256):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w = (0.05 * rng.standard_normal((c, k))).astype(np.float32)
        x = np.abs(rng.standard_normal((d, k))).astype(np.float32)
        out.append({"name": f"l{i}", "weight": w, "inputs": x, "config": Config(accumulator_bits=16, act_range="output")})  # one job per layer
    return out


def job_counts(ports):
    counts = []
    for p in ports:
        with Client(f"127.0.0.1:{p}", retries=1) as c:
            counts.append(len(c.list_jobs()))
    return counts


class RoundRobinTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.servers = [start_server("--workers", "2") for _ in range(2)]
        cls.ports = [p for _, p in cls.servers]
        cls.target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in cls.ports)

    @classmethod
    def tearDownClass(cls):
        for proc, _ in cls.servers:
            if proc.poll() is None:
                stop(proc)

    def test_round_robin_spreads_layers_and_pick_first_does_not(self):
        before = job_counts(self.ports)
        with Client(self.target) as c:
            res = c.quantize_many(layers(8), max_concurrency=4)
        self.assertEqual([r.name for r in res], [f"l{i}" for i in range(8)])
        spread = [a - b for a, b in zip(job_counts(self.ports), before)]
        self.assertEqual(sum(spread), 8)
        self.assertGreaterEqual(min(spread), 2, spread)
        before = job_counts(self.ports)
        with Client(self.target, lb_policy=None) as c:  # gRPC's default: every call to one server
            c.quantize_many(layers(6, seed=1), max_concurrency=3)
        spread = sorted(a - b for a, b in zip(job_counts(self.ports), before))
        self.assertEqual(spread, [0, 6])

    def test_failed_layer_keeps_finished_siblings(self):
        specs = layers(5, seed=2)
        specs[3]["config"] = Config(weight_bits=12, act_range="output")
        with Client(self.target) as c:
            with self.assertRaises(QuantizeManyError) as e:
                c.quantize_many(specs, max_concurrency=2)
        err = e.exception
        self.assertEqual(list(err.failures), ["l3"])
        self.assertEqual(err.failures["l3"].code.name, "INVALID_ARGUMENT")
        self.assertEqual([r is None for r in err.results], [False, False, False, True, False])
        self.assertTrue(all(r.verify().consistent for r in err.results if r is not None))

    def test_backoff_outlasts_a_restart(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        spec = layers(1, seed=3)[0]
        with Client(f"127.0.0.1:{port}", retry_seconds=1.0) as c:  # a short budget gives up
            t0 = time.monotonic()
            with self.assertRaises(ServerError) as e:
                c.quantize("x", spec["weight"], inputs=spec["inputs"])
            self.assertEqual(e.exception.code.name, "UNAVAILABLE")
            self.assertLess(time.monotonic() - t0, 10)
        late = []
        starter = threading.Timer(4.0, lambda: late.append(subprocess.Popen(
            [server_binary(), "--address", f"127.0.0.1:{port}", "--insecure", "--drain-delay-seconds", "0"],
            stderr=subprocess.DEVNULL)))
        starter.start()
        try:
            with Client(f"127.0.0.1:{port}") as c:  # default budget (120 s)
                t0 = time.monotonic()
                r = c.quantize("late", spec["weight"], inputs=spec["inputs"], config=spec["config"])
                self.assertGreater(time.monotonic() - t0, 3.5)
                self.assertTrue(r.verify().consistent)
        finally:
            starter.join()
            for p in late:
                stop(p)

    def test_replica_killed_mid_job_loses_no_layer(self):
        procs = [start_server("--workers", "1") for _ in range(2)]
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for _, p in procs)
        done = []

        def finished(r):
            done.append(r.name)
            if len(done) == 2:
                os.kill(procs[0][0].pid, signal.SIGKILL)

        try:
            specs = layers(16, seed=4, c=64, k=256, d=512)
            with Client(target) as c:
                res = c.quantize_many(specs, max_concurrency=4, on_result=finished)
            self.assertEqual([r.name for r in res], [s["name"] for s in specs])
            self.assertIsNotNone(procs[0][0].poll())  # the replica really died mid-job
            with Client(f"127.0.0.1:{procs[1][1]}") as alone:
                for s, r in zip(specs[:3], res):
                    again = alone.quantize(s["name"], s["weight"], inputs=s["inputs"], config=s["config"])
                    np.testing.assert_array_equal(again.codes, r.codes)
        finally:
            for p, _ in procs:
                if p.poll() is None:
                    stop(p)


if __name__ == "__main__":
    unittest.main()
