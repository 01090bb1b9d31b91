"""The axeq.v1 wire contract as a third-party client meets it: raw protobuf messages from the stubs
generated into <build>/python/axeq/v1 (no axeq client code is imported), against a real
axeq-server. Upload (rows and statistics), watch, fetch (codes rebuilt from ResultChunks equal the
embedded CLI's RESULT file), list, cancel, idempotent resubmission, every error path of
docs/service.md's table, and grpc.health.v1 (overall and per service, NOT_SERVING while draining).

Also issue 15's job-manager items: ids stable from the first event, Cancel -> CANCELLING, deadline ->
DEADLINE_EXCEEDED, a layer over the whole budget is FAILED_PRECONDITION, rejected uploads unlisted.
Environment: AXEQ_SERVER_BIN, AXEQ_CLI_BIN, AXEQ_PYTHON_STUBS (<build>/python)."""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest

import grpc
import numpy as np

SERVER = os.environ.get("AXEQ_SERVER_BIN", os.path.join(os.environ.get("AXEQ_BUILD_DIR", "build"), "server", "axeq-server"))
CLI = os.environ.get("AXEQ_CLI_BIN", os.path.join(os.environ.get("AXEQ_BUILD_DIR", "build"), "client", "axeq"))
STUBS = os.environ.get("AXEQ_PYTHON_STUBS", os.path.join(os.environ.get("AXEQ_BUILD_DIR", "build"), "python"))

# Import the generated modules without running the axeq package's __init__ (client code).
_pkg = types.ModuleType("axeq")
_pkg.__path__ = [os.path.join(STUBS, "axeq")]
sys.modules["axeq"] = _pkg
from axeq.v1 import axeq_pb2 as pb  # noqa: E402
from axeq.v1 import axeq_pb2_grpc as pb_grpc  # noqa: E402


def health_stubs(tmp):
    """grpc.health.v1 stubs generated with protoc from Debian's grpc-proto (flat, see NOTES)."""
    shutil.copy("/usr/share/grpc-proto/grpc/health/v1/health.proto", tmp)
    subprocess.run(["protoc", f"--proto_path={tmp}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                    "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin", "health.proto"], check=True)
    sys.path.insert(0, tmp)
    import health_pb2, health_pb2_grpc  # noqa: E401
    return health_pb2, health_pb2_grpc


class Server:
    """A real axeq-server on 127.0.0.1:0; the port comes from its first log line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([SERVER, "--insecure", "--address", "127.0.0.1:0", *args],
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if not line.startswith("{"):
            raise RuntimeError(f"axeq-server did not start: {line}")
        self.port = json.loads(line)["port"]
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 16 << 20)])
        self.stub = pb_grpc.QuantizerStub(self.channel)

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def write_safetensors(path, tensors):
    header, blobs, at = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [at, at + a.nbytes]}
        blobs.append(a.tobytes())
        at += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "I8": np.int8, "I32": np.int32, "F64": np.float64}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def layer(seed, c=12, k=40, d=200):
    """Weights, float rows X and their 8-bit unsigned codes' values X~ = s * (code - 0)."""
    rng = np.random.default_rng(seed)
    w = (0.05 * rng.standard_t(3, size=(c, k))).astype(np.float32)
    x = np.abs(rng.standard_normal((d, k))).astype(np.float32)
    scale = np.float32(x.max() / 255)
    xq = (np.clip(np.round(x / scale), 0, 255) * scale).astype(np.float32)
    return w, x, xq, scale


def config(**kw):
    return pb.QuantizationConfig(**{"algorithm": pb.ALGORITHM_GPFQ, "accumulator_bits": 16, "tile_size": 16, **kw})


def header(name, w, rows=True, key="", detach=False, scale=0.01, cfg=None, **kw):
    return pb.UploadRequest(header=pb.LayerHeader(
        layer_name=name, output_channels=w.shape[0], inputs=w.shape[1], config=cfg or config(),
        activations=pb.ActivationQuantizer(bits=8, scale=float(scale), zero_point=0),
        calibration=pb.CALIBRATION_KIND_ROWS if rows else pb.CALIBRATION_KIND_STATISTICS,
        idempotency_key=key, detach=detach, **kw))


def tensor(kind, a, offset=0):
    return pb.UploadRequest(tensor=pb.TensorChunk(tensor=kind, offset=offset, data=np.ascontiguousarray(a, np.float32).tobytes()))


def tensor_chunks(kind, a, chunk=3 << 20):
    """A tensor as chunks of at most 3 MiB (offsets in float32 elements)."""
    flat = np.ascontiguousarray(a, np.float32).reshape(-1)
    n = chunk // 4
    return [tensor(kind, flat[b:b + n], offset=b) for b in range(0, flat.size, n)]


def rows_upload(name, w, x, xq, scale, key="", detach=False, cfg=None):
    msgs = [header(name, w, key=key, detach=detach, scale=scale, cfg=cfg), tensor(pb.TENSOR_KIND_WEIGHT, w)]
    for r0 in range(0, x.shape[0], 64):  # chunking does not change the result
        msgs.append(pb.UploadRequest(rows=pb.RowsChunk(row_offset=r0, inputs=x[r0:r0 + 64].tobytes(),
                                                       quant_inputs=xq[r0:r0 + 64].tobytes())))
    return msgs + [pb.UploadRequest(commit=pb.Commit(chunks=len(msgs) - 1))]


def stats_upload(name, w, gram, cross, samples, key="", detach=False, cfg=None):
    msgs = [header(name, w, rows=False, key=key, detach=detach, samples=samples, cfg=cfg),
            *tensor_chunks(pb.TENSOR_KIND_GRAM, gram), *tensor_chunks(pb.TENSOR_KIND_WEIGHT, w),
            *tensor_chunks(pb.TENSOR_KIND_CROSS, cross)]
    return msgs + [pb.UploadRequest(commit=pb.Commit(chunks=len(msgs) - 1))]


def run(call):
    """Events of a streaming call and its status code (OK or the error's)."""
    events = []
    try:
        for e in call:
            events.append(e)
        return events, grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return events, err.code(), err.details()


def rebuild(events):
    """codes int8 [C,K] and scales [C,groups] from the ResultChunks, and the Finished summary."""
    parts = {pb.RESULT_PART_CODES: bytearray(), pb.RESULT_PART_SCALES: bytearray(), pb.RESULT_PART_BIAS: bytearray()}
    fin = None
    for e in events:
        if e.HasField("result"):
            buf = parts[e.result.part]
            assert e.result.offset == len(buf), "result chunks arrive in order"
            buf += e.result.data
        elif e.HasField("finished"):
            fin = e.finished
    c, k = fin.output_channels, fin.inputs
    codes = np.frombuffer(bytes(parts[pb.RESULT_PART_CODES]), np.int8).reshape(c, k)
    scales = np.frombuffer(bytes(parts[pb.RESULT_PART_SCALES]), np.float32).reshape(c, fin.scale_groups)
    return codes, scales, fin


def verify_certificate(codes, cert):
    """The verdict recomputed from the codes alone (docs/service.md's recipe), for the certificate's
    own N, P and T; also checks the digest and each channel's worst-tile range against the claim."""
    c, k = codes.shape
    assert hashlib.sha256(codes.astype(np.int8).tobytes()).hexdigest() == cert.weights_sha256
    mu, nu = cert.input_min, cert.input_max
    q = codes.astype(np.int64)
    hi_t, lo_t = np.maximum(q * mu, q * nu), np.minimum(q * mu, q * nu)
    t = cert.tile_size
    his = np.stack([hi_t[:, b:b + t].sum(1) for b in range(0, k, t)], 1)
    los = np.stack([lo_t[:, b:b + t].sum(1) for b in range(0, k, t)], 1)
    for ch in range(c):
        claim = cert.channels[ch]
        assert (claim.lo, claim.hi) == (los[ch, claim.tile], his[ch, claim.tile])
        assert (claim.row_lo, claim.row_hi) == (lo_t[ch].sum(), hi_t[ch].sum())
    lim, lim_o = (1 << (cert.accumulator_bits - 1)) - 1, (1 << (cert.outer_accumulator_bits - 1)) - 1
    return bool((his <= lim).all() and (-los <= lim).all() and (hi_t.sum(1) <= lim_o).all() and (-lo_t.sum(1) <= lim_o).all())


def long_job(stub, name, md):
    """A detached statistics upload that keeps one worker busy for a while: (job id, call)."""
    rng = np.random.default_rng(7)
    k, c = 2560, 6144  # long enough (seconds) on a quiet 2-core machine
    w = (0.02 * rng.standard_normal((c, k))).astype(np.float32)
    g = np.eye(k, dtype=np.float32) + np.float32(0.01)
    msgs = stats_upload(name, w, g, g, 100, detach=True, cfg=config(block_size=16, precision=pb.PRECISION_FLOAT64))
    call = stub.Quantize(iter(msgs), metadata=md, timeout=120)
    return next(call).job_id, call


class WireContract(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.health_pb2, cls.health_grpc = health_stubs(cls.tmp)
        tokens = os.path.join(cls.tmp, "tokens")
        with open(tokens, "w") as f:
            f.write("alice-token-0123456789 alice\nbob-token-0123456789 bob\n")
        cls.srv = Server("--workers", "1", "--drain-delay-seconds", "0", "--tokens-file", tokens)
        cls.stub = cls.srv.stub
        cls.alice = [("authorization", "Bearer alice-token-0123456789")]
        cls.bob = [("authorization", "Bearer bob-token-0123456789")]

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def quantize(self, msgs, md=None, timeout=60):
        return run(self.stub.Quantize(iter(msgs), metadata=md or self.alice, timeout=timeout))

    def long_job(self, name):
        return long_job(self.stub, name, self.alice)

    def wait_state(self, job_id, states, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            for j in self.stub.ListJobs(pb.ListJobsRequest(), metadata=self.alice).jobs:
                if j.job_id == job_id and j.state in states:
                    return j.state
            time.sleep(0.05)
        self.fail(f"job {job_id} never reached {states}")

    # --- uploads, fetch, watch, list -----------------------------------------------------------
    def test_rows_upload_matches_embedded_cli_and_certificate_checks_out(self):
        w, x, xq, scale = layer(1)
        events, code, details = self.quantize(rows_upload("lin", w, x, xq, scale))
        self.assertEqual(code, grpc.StatusCode.OK, details)
        self.assertEqual(events[0].progress.state, pb.JOB_STATE_RECEIVING)
        self.assertTrue(events[0].job_id)
        self.assertEqual({e.job_id for e in events}, {events[0].job_id}, "one job id on every event")
        codes, scales, fin = rebuild(events)
        self.assertEqual(fin.state, pb.JOB_STATE_SUCCEEDED)
        self.assertTrue(np.isfinite(fin.report.relative_error), "ROWS uploads compute the report by default")
        self.assertTrue(fin.certificate.safe)
        self.assertTrue(verify_certificate(codes, fin.certificate))
        # The embedded CLI on the same X, X~ and options writes the same codes.
        lf, cf, rf = (os.path.join(self.tmp, n) for n in ("l.st", "c.st", "r.st"))
        write_safetensors(lf, {"lin.weight": w})
        write_safetensors(cf, {"lin.inputs": x, "lin.quant_inputs": xq})
        subprocess.run([CLI, "quantize", "--model", lf, "--calibration", cf, "--algorithm", "gpfq", "--acc-bits", "16",
                        "--tile", "16", "--out", rf, "--quiet"], check=True, stdout=subprocess.DEVNULL)
        embedded = read_safetensors(rf)
        np.testing.assert_array_equal(codes, embedded["lin.qweight"])
        np.testing.assert_array_equal(scales, embedded["lin.scales"].reshape(scales.shape))
        # Fetch by id (Watch with include_result) rebuilds the same result; without it, no chunks.
        fetched, code, _ = run(self.stub.Watch(pb.WatchRequest(job_id=events[0].job_id, include_result=True), metadata=self.alice))
        self.assertEqual(code, grpc.StatusCode.OK)
        np.testing.assert_array_equal(rebuild(fetched)[0], codes)
        summary, code, _ = run(self.stub.Watch(pb.WatchRequest(job_id=events[0].job_id), metadata=self.alice))
        self.assertFalse(any(e.HasField("result") for e in summary))
        self.assertEqual(summary[-1].finished.certificate.weights_sha256, fin.certificate.weights_sha256)
        listed = {j.job_id: j for j in self.stub.ListJobs(pb.ListJobsRequest(), metadata=self.alice).jobs}
        self.assertEqual(listed[events[0].job_id].state, pb.JOB_STATE_SUCCEEDED)
        self.assertEqual(listed[events[0].job_id].layer_name, "lin")

    def test_statistics_upload_equals_rows_upload(self):
        w, x, xq, scale = layer(2)
        d = x.shape[0]
        gram = (xq.astype(np.float64).T @ xq / d).astype(np.float32)
        cross = (xq.astype(np.float64).T @ x / d).astype(np.float32)
        events, code, details = self.quantize(stats_upload("st", w, gram, cross, d))
        self.assertEqual(code, grpc.StatusCode.OK, details)
        codes, _, fin = rebuild(events)
        self.assertTrue(verify_certificate(codes, fin.certificate))
        self.assertFalse(np.isfinite(fin.report.relative_error), "no X^T X sent: the float-input error is unknown")
        self.assertEqual(fin.report.samples, d)

    def test_idempotent_resubmission(self):
        w, x, xq, scale = layer(3)
        first, code, _ = self.quantize(rows_upload("idem", w, x, xq, scale, key="key-1"))
        self.assertEqual(code, grpc.StatusCode.OK)
        again, code, _ = self.quantize(rows_upload("idem", w, x, xq, scale, key="key-1"))
        self.assertEqual(code, grpc.StatusCode.OK)
        np.testing.assert_array_equal(rebuild(again)[0], rebuild(first)[0])
        self.assertEqual(again[-1].job_id, first[-1].job_id, "the resubmission follows the existing job")
        _, code, _ = self.quantize(rows_upload("idem", w, x * 2, xq, scale, key="key-1"))
        self.assertEqual(code, grpc.StatusCode.ALREADY_EXISTS)

    def test_resubmission_has_a_stable_id_from_the_first_event(self):
        w, x, xq, scale = layer(4)
        first, _, _ = self.quantize(rows_upload("idem2", w, x, xq, scale, key="key-2"))
        again, _, _ = self.quantize(rows_upload("idem2", w, x, xq, scale, key="key-2"))
        self.assertEqual(again[0].job_id, first[0].job_id)

    # --- cancel ------------------------------------------------------------------------------
    def test_cancel_queued_and_running_jobs(self):
        running, call = self.long_job("long")
        self.wait_state(running, {pb.JOB_STATE_RUNNING})
        w, x, xq, scale = layer(5)
        queued_call = self.stub.Quantize(iter(rows_upload("queued", w, x, xq, scale, detach=True)), metadata=self.alice, timeout=60)
        queued = next(queued_call).job_id
        self.wait_state(queued, {pb.JOB_STATE_QUEUED})
        self.assertEqual(self.stub.Cancel(pb.CancelRequest(job_id=queued), metadata=self.alice).state, pb.JOB_STATE_CANCELLED)
        state = self.stub.Cancel(pb.CancelRequest(job_id=running), metadata=self.alice).state
        self.assertIn(state, (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING, pb.JOB_STATE_CANCELLED))
        for job in (queued, running):
            events, code, _ = run(self.stub.Watch(pb.WatchRequest(job_id=job), metadata=self.alice, timeout=60))
            self.assertEqual(code, grpc.StatusCode.CANCELLED)
            self.assertEqual(events[-1].finished.state, pb.JOB_STATE_CANCELLED)
            self.assertEqual(events[-1].finished.code, grpc.StatusCode.CANCELLED.value[0])
        run(call)
        run(queued_call)

    def test_cancel_running_job_answers_cancelling(self):
        running, call = self.long_job("long2")
        self.wait_state(running, {pb.JOB_STATE_RUNNING})
        state = self.stub.Cancel(pb.CancelRequest(job_id=running), metadata=self.alice).state
        run(call)
        self.assertIn(state, (pb.JOB_STATE_CANCELLING, pb.JOB_STATE_CANCELLED))

    def test_deadline_is_recorded_as_deadline_exceeded(self):
        running, call = self.long_job("long3")  # keeps the one worker busy
        self.wait_state(running, {pb.JOB_STATE_RUNNING})
        w, x, xq, scale = layer(13)
        events, code, _ = run(self.stub.Quantize(iter(rows_upload("late", w, x, xq, scale)), metadata=self.alice, timeout=1.5))
        self.stub.Cancel(pb.CancelRequest(job_id=running), metadata=self.alice)
        run(call)
        self.assertEqual(code, grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(events[-1].progress.state, pb.JOB_STATE_QUEUED)
        done, _, _ = run(self.stub.Watch(pb.WatchRequest(job_id=events[0].job_id), metadata=self.alice, timeout=60))
        self.assertEqual(done[-1].finished.state, pb.JOB_STATE_CANCELLED)
        self.assertEqual(done[-1].finished.code, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])

    # --- errors ------------------------------------------------------------------------------
    def assertCode(self, msgs, expected, *words, md=None):
        events, code, details = self.quantize(msgs, md=md)
        self.assertEqual(code, expected, details)
        for word in words:
            self.assertIn(word, details)
        return events

    def test_invalid_argument_paths(self):
        w, x, xq, scale = layer(6)
        good = rows_upload("bad", w, x, xq, scale)
        commit = lambda n: pb.UploadRequest(commit=pb.Commit(chunks=n))  # noqa: E731
        bad_name = header("", w)
        self.assertEqual(self.assertCode([bad_name], grpc.StatusCode.INVALID_ARGUMENT, "layer_name"), [],
                         "header errors come before any event")
        self.assertCode([header("b", w, cfg=config(weight_bits=12))], grpc.StatusCode.INVALID_ARGUMENT, "weight_bits")
        nan = w.copy()
        nan[1, 3] = np.nan
        self.assertCode([good[0], tensor(pb.TENSOR_KIND_WEIGHT, nan)], grpc.StatusCode.INVALID_ARGUMENT, "NaN", "element 43")
        self.assertCode([good[0], tensor(pb.TENSOR_KIND_WEIGHT, w[:2], offset=8)], grpc.StatusCode.INVALID_ARGUMENT, "out of order")
        self.assertCode([good[0], tensor(pb.TENSOR_KIND_WEIGHT, np.zeros(w.size + 1))], grpc.StatusCode.INVALID_ARGUMENT, "beyond")
        odd = pb.UploadRequest(tensor=pb.TensorChunk(tensor=pb.TENSOR_KIND_WEIGHT, data=b"abc"))
        self.assertCode([good[0], odd], grpc.StatusCode.INVALID_ARGUMENT, "whole float32")
        big = pb.UploadRequest(tensor=pb.TensorChunk(tensor=pb.TENSOR_KIND_WEIGHT, data=bytes((4 << 20) + 4)))
        self.assertCode([good[0], big], grpc.StatusCode.INVALID_ARGUMENT, "4 MiB")
        self.assertCode(good[:-1] + [commit(99)], grpc.StatusCode.INVALID_ARGUMENT, "commit")
        self.assertCode([good[0], good[0]], grpc.StatusCode.INVALID_ARGUMENT, "second header")
        self.assertCode(good[:-1], grpc.StatusCode.INVALID_ARGUMENT, "before its commit")
        self.assertCode([good[1]], grpc.StatusCode.INVALID_ARGUMENT, "header")
        self.assertCode([good[0], tensor(pb.TENSOR_KIND_GRAM, np.eye(2))], grpc.StatusCode.INVALID_ARGUMENT, "not expected")

    def test_failed_precondition_paths(self):
        w, x, xq, scale = layer(7)
        good = rows_upload("pre", w, x, xq, scale)
        self.assertCode([good[0], good[1], pb.UploadRequest(commit=pb.Commit(chunks=1))],
                        grpc.StatusCode.FAILED_PRECONDITION, "no calibration rows")
        self.assertCode([good[0], pb.UploadRequest(commit=pb.Commit(chunks=0))], grpc.StatusCode.FAILED_PRECONDITION, "WEIGHT")
        tight = rows_upload("tight", w, x, xq, scale, cfg=config(accumulator_bits=8, tile_size=0))
        self.assertCode(tight, grpc.StatusCode.FAILED_PRECONDITION)

    def test_resource_exhausted_for_messages_over_8_mib(self):
        w, x, xq, scale = layer(8)
        huge = pb.UploadRequest(tensor=pb.TensorChunk(tensor=pb.TENSOR_KIND_WEIGHT, data=bytes(9 << 20)))
        self.assertCode([rows_upload("h", w, x, xq, scale)[0], huge], grpc.StatusCode.RESOURCE_EXHAUSTED)

    def test_authentication_and_ownership(self):
        w, x, xq, scale = layer(9)
        self.assertCode(rows_upload("a", w, x, xq, scale), grpc.StatusCode.UNAUTHENTICATED, md=[("authorization", "Bearer nope")])
        self.assertCode(rows_upload("a", w, x, xq, scale), grpc.StatusCode.UNAUTHENTICATED, md=[("x", "y")])
        events = self.assertCode(rows_upload("mine", w, x, xq, scale), grpc.StatusCode.OK)
        job = events[0].job_id
        for call in (lambda: list(self.stub.Watch(pb.WatchRequest(job_id=job), metadata=self.bob)),
                     lambda: self.stub.Cancel(pb.CancelRequest(job_id=job), metadata=self.bob)):
            with self.assertRaises(grpc.RpcError) as e:
                call()
            self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertNotIn(job, [j.job_id for j in self.stub.ListJobs(pb.ListJobsRequest(), metadata=self.bob).jobs])
        with self.assertRaises(grpc.RpcError) as e:
            list(self.stub.Watch(pb.WatchRequest(job_id="no-such-job"), metadata=self.alice))
        self.assertIn(e.exception.code(), (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT))

    def test_rejected_uploads_are_not_listed(self):
        w, x, xq, scale = layer(10)
        good = rows_upload("rejected", w, x, xq, scale)
        events, code, _ = self.quantize(good[:-1] + [pb.UploadRequest(commit=pb.Commit(chunks=99))])
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertNotIn(events[0].job_id, [j.job_id for j in self.stub.ListJobs(pb.ListJobsRequest(), metadata=self.alice).jobs])

    # --- health ------------------------------------------------------------------------------
    def health(self, srv, service):
        stub = self.health_grpc.HealthStub(srv.channel)
        try:
            return stub.Check(self.health_pb2.HealthCheckRequest(service=service), timeout=5).status
        except grpc.RpcError as e:
            return e.code()

    def test_health_overall_and_per_service(self):
        serving = self.health_pb2.HealthCheckResponse.SERVING
        self.assertEqual(self.health(self.srv, ""), serving)
        self.assertEqual(self.health(self.srv, "axeq.v1.Quantizer"), serving)
        self.assertEqual(self.health(self.srv, "no.such.Service"), grpc.StatusCode.NOT_FOUND)


class Limits(unittest.TestCase):
    """Admission (a server with a small memory budget) and draining (SIGTERM)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.health_pb2, cls.health_grpc = health_stubs(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_budget_refusals_transient_and_permanent(self):
        srv = Server("--workers", "1", "--memory-budget-mb", "64", "--drain-delay-seconds", "0")
        try:
            k, c = 1024, 2048  # ~30 MB reserved: one fits, two do not
            rng = np.random.default_rng(11)
            w = (0.02 * rng.standard_normal((c, k))).astype(np.float32)
            g = np.eye(k, dtype=np.float32)
            call = srv.stub.Quantize(iter(stats_upload("one", w, g, g, 10, detach=True)), timeout=60)
            next(call)
            second = srv.stub.Quantize(iter(stats_upload("two", w, g, g, 10)), timeout=60)
            _, code, details = run(second)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.assertIn("axeq-retry-after-ms", dict(second.trailing_metadata() or ()))
            else:  # the first job may have finished already on a fast machine
                self.assertEqual(code, grpc.StatusCode.OK, details)
            run(call)
        finally:
            srv.stop()

    def test_layer_over_the_whole_budget_is_not_retryable(self):
        srv = Server("--memory-budget-mb", "8", "--drain-delay-seconds", "0")
        try:
            w = np.zeros((1024, 1024), np.float32)
            g = np.eye(1024, dtype=np.float32)
            _, code, details = run(srv.stub.Quantize(iter(stats_upload("big", w, g, g, 10)), timeout=60))
            self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION, details)
        finally:
            srv.stop()

    def test_draining_reports_not_serving_then_unavailable(self):
        srv = Server("--workers", "1", "--drain-delay-seconds", "2", "--grace-seconds", "30")
        health = lambda s: self.health_grpc.HealthStub(srv.channel).Check(  # noqa: E731
            self.health_pb2.HealthCheckRequest(service=s), timeout=5).status
        try:
            self.assertEqual(health("axeq.v1.Quantizer"), self.health_pb2.HealthCheckResponse.SERVING)
            _, busy = long_job(srv.stub, "busy", [])  # keeps the server in its grace period
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            not_serving = self.health_pb2.HealthCheckResponse.NOT_SERVING
            self.assertEqual(health(""), not_serving)
            self.assertEqual(health("axeq.v1.Quantizer"), not_serving)
            time.sleep(2)
            w, x, xq, scale = layer(12)
            _, code, _ = run(srv.stub.Quantize(iter(rows_upload("late", w, x, xq, scale)), timeout=10))
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
        finally:
            srv.stop()


if __name__ == "__main__":
    unittest.main()
