"""The Python client against a real axeq-server binary: bit-identical to the CLI's embedded engine
(through shared safetensors files), statistics uploads, local certificate verification, tamper
detection, concurrency, resume by id, error codes, and the CLI reading files the client wrote."""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import numpy as np

import axeq
from axeq import ActivationQuantizer, Client, Config, ServerError

SERVER = os.environ.get("AXEQ_SERVER_BIN", os.path.join(os.environ.get("AXEQ_BUILD_DIR", "build"), "server", "axeq-server"))
CLI = os.environ.get("AXEQ_CLI_BIN", os.path.join(os.environ.get("AXEQ_BUILD_DIR", "build"), "client", "axeq"))


def random_layer(rng, c=48, k=80, d=300):
    w = (0.05 * rng.standard_t(3, size=(c, k))).astype(np.float32)
    s = np.exp(1.2 * rng.standard_normal(k)).astype(np.float32)
    x = np.maximum(s * rng.standard_normal((d, k)), -0.2 * s).astype(np.float32)
    return w, x


class ServerFixture(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.proc = subprocess.Popen([SERVER, "--address", "127.0.0.1:0", "--insecure", "--workers", "2",
                                     "--results-dir", os.path.join(cls.tmp, "results"), "--drain-delay-seconds", "0"],
                                    stderr=subprocess.PIPE, text=True)
        line = cls.proc.stderr.readline()
        cls.port = json.loads(line)["port"]
        threading.Thread(target=lambda: [None for _ in cls.proc.stderr], daemon=True).start()
        cls.client = Client(f"127.0.0.1:{cls.port}", deadline=120)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.proc.terminate()
        cls.proc.wait(timeout=30)


class ClientTest(ServerFixture):
    def test_bit_identical_to_cli_embedded(self):
        rng = np.random.default_rng(1)
        w, x = random_layer(rng)
        bias = np.linspace(-1, 1, w.shape[0]).astype(np.float32)
        cfg = Config(algorithm="gpfq", accumulator_bits=16, tile_size=32)
        act = ActivationQuantizer.calibrate(x, 8)
        remote = self.client.quantize("lin", w, bias=bias, inputs=x, quant_inputs=act.apply(x), activation=act, config=cfg)
        layers, cal, out = (os.path.join(self.tmp, n) for n in ("l.st", "c.st", "r.st"))
        axeq.write_safetensors(layers, {"lin.weight": w, "lin.bias": bias})
        axeq.write_safetensors(cal, {"lin.inputs": x, "lin.quant_inputs": act.apply(x)})
        subprocess.run([CLI, "quantize", "--model", layers, "--calibration", cal, "--algorithm", "gpfq",
                        "--acc-bits", "16", "--tile", "32", "--out", out, "--quiet"], check=True, capture_output=True)
        local = axeq.read_result(out)["lin"]
        np.testing.assert_array_equal(remote.codes, local.codes)
        np.testing.assert_array_equal(remote.scales, local.scales)
        np.testing.assert_array_equal(remote.bias, local.bias)
        self.assertEqual(remote.certificate["weights_sha256"], local.certificate["weights_sha256"])
        ok, safe, problems = remote.verify()
        self.assertTrue(ok, problems)
        self.assertTrue(safe)
        # The files the client writes are the CLI's format: `axeq verify` accepts them.
        mine = os.path.join(self.tmp, "mine.st")
        axeq.write_result(mine, [remote])
        subprocess.run([CLI, "verify", mine], check=True, capture_output=True)

    def test_auto_activation_range_is_the_best_of_its_trials_and_output_matches_the_cli(self):
        rng = np.random.default_rng(5)
        w, x = random_layer(rng)
        w[:, :4] *= 10  # a few input channels the output weighs heavily
        cfg = Config(accumulator_bits=14, tile_size=16)
        auto = self.client.quantize("lin", w, inputs=x, config=cfg)  # rows, no quantizer: act_range "auto"
        trials = [self.client.quantize("lin", w, inputs=x, activation=a, config=cfg)
                  for a in ActivationQuantizer.candidates(x, 8, method="auto", weights=w)]
        self.assertGreater(len(trials), 1)
        errors = [t.report["relative_error"] for t in trials]
        self.assertEqual(auto.report["relative_error"], min(errors), errors)
        for m in ("minmax", "percentile"):
            fixed = self.client.quantize("lin", w, inputs=x, activation=ActivationQuantizer.calibrate(x, 8, method=m),
                                         config=cfg)
            self.assertLessEqual(auto.report["relative_error"], fixed.report["relative_error"], m)
        # The "output" search is core's: the CLI's embedded engine picks the same range.
        layers, cal, out = (os.path.join(self.tmp, n) for n in ("ol.st", "oc.st", "or.st"))
        axeq.write_safetensors(layers, {"lin.weight": w})
        axeq.write_safetensors(cal, {"lin.inputs": x})
        subprocess.run([CLI, "quantize", "--model", layers, "--calibration", cal, "--act-range", "output",
                        "--out", out, "--quiet"], check=True, capture_output=True)
        cli = axeq.read_result(out)["lin"].activation
        mine = ActivationQuantizer.calibrate(x, 8, method="output", weights=w)
        self.assertEqual((mine.scale, mine.zero_point), (cli.scale, cli.zero_point))

    def test_statistics_upload_and_tampering(self):
        rng = np.random.default_rng(2)
        w, x = random_layer(rng, c=32, k=64)
        act = ActivationQuantizer.calibrate(x, 8, percentiles=(0.001, 99.999))
        xq = act.apply(x)
        d = x.shape[0]
        events = []
        r = self.client.quantize("stats", w, gram=xq.T @ xq / d, cross=xq.T @ x / d, xx=x.T @ x / d,
                                 samples=d, activation=act, config=Config(accumulator_bits=15),
                                 progress=lambda state, f: events.append((state, f)))
        # Upload progress (non-decreasing, ending at exactly 1) is done before the job is queued;
        # the server's RECEIVING events may interleave with it (the stream is full duplex).
        uploads = [f for s, f in events if s == "UPLOADING"]
        self.assertTrue(uploads and uploads[-1] == 1.0 and uploads == sorted(uploads))
        done = events.index(("UPLOADING", 1.0))
        self.assertTrue(all(s in ("UPLOADING", "JOB_STATE_RECEIVING") for s, _ in events[:done]))
        self.assertEqual(events[-1][0], "JOB_STATE_SUCCEEDED")
        ok, safe, _ = r.verify()
        self.assertTrue(ok and safe)
        self.assertLess(r.report["relative_error"], 1.0)
        bad = r.codes.copy()
        bad[0, 0] = 7 if bad[0, 0] != 7 else -7
        ok, _, problems = axeq.verify_certificate(bad, r.certificate)
        self.assertFalse(ok)
        self.assertTrue(any("sha256" in p for p in problems))
        lie = dict(r.certificate, safe=not r.certificate["safe"])
        self.assertFalse(axeq.verify_certificate(r.codes, lie)[0])

    def test_local_verifier_matches_server_certificates(self):
        rng = np.random.default_rng(3)
        for signed in (False, True):
            for tile in (0, 16):
                w, x = random_layer(rng, c=16, k=48)
                cfg = Config(method="base", accumulator_bits=14, tile_size=tile, signed_inputs=signed)
                r = self.client.quantize("v", w, inputs=x, config=cfg)
                ok, safe, problems = r.verify()
                self.assertTrue(ok, problems)
                self.assertEqual(safe, r.certificate["safe"])

    def test_many_layers_concurrently_and_resume_by_id(self):
        rng = np.random.default_rng(4)
        specs = []
        for i in range(6):
            w, x = random_layer(rng, c=24, k=40, d=128)
            specs.append({"name": f"l{i}", "weight": w, "inputs": x, "config": Config(accumulator_bits=15)})
        seen = set()
        results = self.client.quantize_many(specs, max_concurrency=3, progress=lambda n, s, f: seen.add(n))
        self.assertEqual([r.name for r in results], [f"l{i}" for i in range(6)])
        self.assertEqual(seen, {f"l{i}" for i in range(6)})
        again = self.client.fetch(results[2].job_id)
        np.testing.assert_array_equal(again.codes, results[2].codes)
        ids = {j["job_id"] for j in self.client.list_jobs()}
        self.assertTrue({r.job_id for r in results} <= ids)

    def test_errors_have_codes(self):
        rng = np.random.default_rng(5)
        w, x = random_layer(rng, c=8, k=16)
        with self.assertRaises(ServerError) as e:
            self.client.quantize("bad", w, inputs=x, config=Config(accumulator_bits=8))
        self.assertEqual(e.exception.code.name, "FAILED_PRECONDITION")
        with self.assertRaises(ServerError) as e:
            self.client.quantize("bad", w, inputs=x, config=Config(weight_bits=12))
        self.assertEqual(e.exception.code.name, "INVALID_ARGUMENT")
        self.assertIn("weight_bits", e.exception.details)
        with self.assertRaises(ValueError):
            self.client.quantize("nan", np.full((2, 2), np.nan), inputs=np.ones((3, 2)))
        with self.assertRaises(ServerError) as e:
            self.client.fetch("0" * 32)
        self.assertEqual(e.exception.code.name, "NOT_FOUND")


class WireTest(unittest.TestCase):
    def test_hand_framed_tensor_chunks_are_upload_requests(self):
        from axeq.client import encode_tensor_chunk
        from axeq.v1 import axeq_pb2 as pb
        rng = np.random.default_rng(5)
        for kind, offset, n in [(1, 0, 0), (3, 7, 5), (2, 1 << 40, 70000), (7, 300, 1)]:
            a = rng.standard_normal(n).astype(np.float32)
            m = pb.UploadRequest.FromString(encode_tensor_chunk(kind, offset, memoryview(a).cast("B")))
            self.assertEqual(m.WhichOneof("kind"), "tensor")
            self.assertEqual((m.tensor.tensor, m.tensor.offset), (kind, offset))
            self.assertEqual(m.tensor.data, a.tobytes())


class TlsTest(unittest.TestCase):
    """TLS and mutual TLS from Python, with certificates made at test time."""

    def test_tls_and_mtls(self):
        d = tempfile.mkdtemp()
        run = lambda *a: subprocess.run(list(a), check=True, capture_output=True, cwd=d)
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca", "-keyout", "ca.key", "-out", "ca.pem")
        for name, san in (("server", "DNS:localhost,IP:127.0.0.1"), ("client", "DNS:client")):
            open(os.path.join(d, name + ".ext"), "w").write(f"subjectAltName={san}\n")
            run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
            run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
        proc = subprocess.Popen([SERVER, "--address", "127.0.0.1:0", "--tls-cert", f"{d}/server.pem", "--tls-key",
                                 f"{d}/server.key", "--tls-client-ca", f"{d}/ca.pem", "--drain-delay-seconds", "0"],
                                stderr=subprocess.PIPE, text=True)
        try:
            port = json.loads(proc.stderr.readline())["port"]
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            rng = np.random.default_rng(9)
            w, x = random_layer(rng, c=8, k=16, d=64)
            with Client(f"localhost:{port}", ca_file=f"{d}/ca.pem", cert_file=f"{d}/client.pem",
                        key_file=f"{d}/client.key", retries=1) as ok:
                r = ok.quantize("tls", w, inputs=x, config=Config(accumulator_bits=14))
                self.assertTrue(r.verify()[0])
            with Client(f"localhost:{port}", ca_file=f"{d}/ca.pem", retries=1, deadline=10) as no_cert:
                with self.assertRaises(ServerError) as e:
                    no_cert.quantize("tls", w, inputs=x)
                self.assertEqual(e.exception.code.name, "UNAVAILABLE")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    unittest.main()
