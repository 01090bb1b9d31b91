"""The numpy-level client of axeq-server: connect (TLS, mTLS, bearer token), quantize one layer from
arrays (calibration rows or statistics), stream progress, get codes, scales, report and certificate
back, submit many layers concurrently, and resume by job id."""
from __future__ import annotations

import json
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable

import grpc
import numpy as np

from .certificate import verify_certificate
from .config import ActivationQuantizer, Config

try:
    from .v1 import axeq_pb2 as pb, axeq_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover
    raise ImportError("axeq.v1 stubs are missing: run client/python/generate.sh (or build the "
                      "axeq_python CMake target and use build/python)") from e

CHUNK_BYTES = 3 << 20
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class ServerError(RuntimeError):
    """A failed call: .code is the grpc.StatusCode, .details the server's message."""

    def __init__(self, code, details):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


from .result import LayerResult  # noqa: E402  (defined in axeq.result)


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def encode_tensor_chunk(kind: int, offset: int, payload: memoryview) -> bytes:
    """UploadRequest{tensor: TensorChunk{tensor: kind, offset, data: payload}} in protobuf wire
    format, built with one copy of the payload (the same bytes the C++ client frames; the server
    decodes them without parsing a message)."""
    inner = b"\x08" + _varint(kind) + b"\x10" + _varint(offset) + b"\x1a" + _varint(payload.nbytes)
    return b"".join((b"\x12", _varint(len(inner) + payload.nbytes), inner, payload))


def _f32(a, name, shape=None):
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} has NaN/Inf values (first at {tuple(int(i) for i in bad)})")
    return a


def _cert_dict(c) -> dict:
    return {
        "weights_sha256": c.weights_sha256, "output_channels": c.output_channels, "inputs": c.inputs,
        "weight_bits": c.weight_bits, "input_bits": c.input_bits, "inputs_signed": c.inputs_signed,
        "input_min": c.input_min, "input_max": c.input_max, "accumulator_bits": c.accumulator_bits,
        "tile_size": c.tile_size, "twos_complement": c.twos_complement,
        "outer_accumulator_bits": c.outer_accumulator_bits, "min_accumulator_bits": c.min_accumulator_bits,
        "min_outer_accumulator_bits": c.min_outer_accumulator_bits, "unsafe_channels": c.unsafe_channels,
        "safe": c.safe, "assumptions": c.assumptions,
        "channels": [{"lo": ch.lo, "hi": ch.hi, "tile": ch.tile, "row_lo": ch.row_lo, "row_hi": ch.row_hi}
                     for ch in c.channels],
    }


class QuantizeManyError(RuntimeError):
    """Some layers of quantize_many failed. .results holds every layer's LayerResult in the order
    given (None where it failed); .failures maps the failed layers' names to their errors."""

    def __init__(self, results, failures):
        detail = "; ".join(f"{n}: {e}" for n, e in list(failures.items())[:5])
        super().__init__(f"{len(failures)} of {len(results)} layers failed: {detail}")
        self.results, self.failures = results, failures


def _error_or_inf(r) -> float:
    """A result's relative output error (the report's), +inf when it has none."""
    e = r.report.get("relative_error", float("nan"))
    return e if e == e else float("inf")


def _upload_messages(header, tensors, rows, progress):
    """The serialized UploadRequests of one layer: header, tensor chunks (then rows chunks), commit.
    Reports upload progress ("UPLOADING", fraction of bytes sent) at most every 0.1 s and at the
    end; runs on gRPC's sending thread."""
    k = header.inputs
    total = sum(a.nbytes for _, a in tensors) + (0 if rows is None else rows[0].nbytes * (1 if rows[1] is None else 2))
    sent, last = 0, 0.0

    def uploaded(nbytes):
        nonlocal sent, last
        sent += nbytes
        now = time.monotonic()
        if progress and (sent == total or now - last > 0.1):
            progress("UPLOADING", sent / total if total else 1.0)
            last = now

    yield pb.UploadRequest(header=header).SerializeToString()
    n = 0
    for kind, a in tensors:
        flat = memoryview(a.reshape(-1)).cast("B")
        step = CHUNK_BYTES // 4 * 4
        for off in range(0, flat.nbytes, step):
            chunk = flat[off:off + step]
            yield encode_tensor_chunk(kind, off // 4, chunk)
            n += 1
            uploaded(chunk.nbytes)
    if rows is not None:
        x, xq = rows
        per = max(1, CHUNK_BYTES // 2 // (4 * k))
        for r0 in range(0, x.shape[0], per):
            xs = x[r0:r0 + per]
            yield pb.UploadRequest(rows=pb.RowsChunk(row_offset=r0, inputs=xs.tobytes(),
                                                     quant_inputs=b"" if xq is None else xq[r0:r0 + per].tobytes())).SerializeToString()
            n += 1
            uploaded(xs.nbytes * (1 if xq is None else 2))
    yield pb.UploadRequest(commit=pb.Commit(chunks=n)).SerializeToString()


class Client:
    """A connection to axeq-server, or to several replicas behind one gRPC target.

    address: any gRPC target: "host:port", "dns:///axeq-headless:50051" (every address the name
    resolves to), "ipv4:127.0.0.1:5001,127.0.0.1:5002". lb_policy: gRPC's load-balancing policy,
    "round_robin" by default so that concurrent layers spread over the replicas (None: gRPC's
    pick_first); a "grpc.service_config" or "grpc.lb_policy_name" in `options` (extra channel
    arguments) wins. UNAVAILABLE and RESOURCE_EXHAUSTED are retried with exponential backoff
    (0.25 s doubling to 8 s, jittered) for up to retry_seconds in all (default 120 s: longer than a
    pod restart), resubmitting under the same idempotency key; `retries` caps the attempts."""

    def __init__(self, address: str, *, tls: bool = False, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, server_name: str | None = None,
                 token: str | None = None, deadline: float = 3600.0, retries: int | None = None,
                 retry_seconds: float = 120.0, lb_policy: str | None = "round_robin", options=()):
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 8 << 20)]
        given = {k for k, _ in options}
        if lb_policy and not given & {"grpc.service_config", "grpc.lb_policy_name"}:
            opts.append(("grpc.service_config", json.dumps({"loadBalancingConfig": [{lb_policy: {}}]})))
        opts = [o for o in opts if o[0] not in given] + list(options)
        if tls or ca_file:
            def read(p):
                if not p:
                    return None
                with open(p, "rb") as f:
                    return f.read()
            creds = grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
            if server_name:
                opts.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(address, creds, options=opts)
        else:
            self._channel = grpc.insecure_channel(address, options=opts)
        self._stub = pb_grpc.QuantizerStub(self._channel)
        # Quantize with pre-encoded requests: tensor chunks are framed by hand around a view of the
        # caller's array (encode_tensor_chunk), saving the protobuf message's copies.
        self._quantize_raw = self._channel.stream_stream(
            "/axeq.v1.Quantizer/Quantize", request_serializer=bytes, response_deserializer=pb.JobEvent.FromString)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self.deadline, self.retry_seconds = deadline, retry_seconds
        self.retries = None if retries is None else max(1, retries)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one layer -------------------------------------------------------------------------------
    def quantize(self, name: str, weight, *, bias=None, inputs=None, quant_inputs=None,
                 activation: ActivationQuantizer | None = None, gram=None, cross=None, xx=None,
                 mean_x=None, mean_xq=None, samples: int | None = None, config: Config | None = None,
                 relative_error: bool = True, detach: bool = False, idempotency_key: str | None = None,
                 progress: Callable[[str, float], None] | None = None) -> LayerResult:
        """Quantizes weight [C, K]. Calibration is either rows (inputs X [D, K] and optionally
        quant_inputs X~; without X~ the server applies `activation`, which defaults to a fit of X by
        config.act_range) or statistics (gram = X~^T X~ / D, cross = X~^T X / D, optional xx, means, samples=D).
        Retries UNAVAILABLE / RESOURCE_EXHAUSTED with backoff under one idempotency key.
        progress(state, fraction) gets "UPLOADING" with the fraction of bytes sent, then the
        server's JobState names with the fraction of the sweep."""
        config = config or Config()
        w = _f32(weight, "weight")
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D [C, K], got shape {w.shape}")
        c, k = w.shape
        b = None if bias is None else _f32(bias, "bias", (c,))
        stats_mode = gram is not None
        if stats_mode == (inputs is not None):
            raise ValueError("give either calibration rows (inputs=...) or statistics (gram=...), not both")
        if activation is None:
            if inputs is None:
                raise ValueError("statistics uploads need the activation quantizer that produced X~")
            ranges = ActivationQuantizer.candidates(inputs, config.input_bits, config.signed_inputs,
                                                    config.act_percentiles, config.act_range, w)
            if len(ranges) > 1 and quant_inputs is None:  # "auto": every range end to end, least error wins
                key = idempotency_key or f"{name}/{uuid.uuid4().hex}"
                trials = [self.quantize(name, w, bias=b, inputs=inputs, activation=a, config=config,
                                        relative_error=True, detach=detach, idempotency_key=f"{key}/range{i}",
                                        progress=progress) for i, a in enumerate(ranges)]
                return min(trials, key=lambda r: _error_or_inf(r))
            activation = ranges[0]
        header = pb.LayerHeader(layer_name=name, output_channels=c, inputs=k, config=config.to_proto(pb),
                                activations=activation.to_proto(pb), has_bias=b is not None, detach=detach,
                                idempotency_key=idempotency_key or f"{name}/{uuid.uuid4().hex}")
        tensors = [(pb.TENSOR_KIND_WEIGHT, w)] + ([(pb.TENSOR_KIND_BIAS, b)] if b is not None else [])
        rows = None
        if stats_mode:
            if samples is None or samples < 1:
                raise ValueError("statistics uploads need samples=D >= 1")
            header.calibration = pb.CALIBRATION_KIND_STATISTICS
            header.samples = int(samples)
            tensors.insert(0, (pb.TENSOR_KIND_GRAM, _f32(gram, "gram", (k, k))))  # first: the server factors it early
            # OPTQ reads cross only for the report's relative error, which also needs xx: without
            # xx it would be uploaded for nothing.
            if cross is not None and (config.algorithm == "gpfq" or xx is not None):
                tensors.append((pb.TENSOR_KIND_CROSS, _f32(cross, "cross", (k, k))))
            if xx is not None:
                header.has_xx = True
                tensors.append((pb.TENSOR_KIND_XX, _f32(xx, "xx", (k, k))))
            if mean_x is not None and mean_xq is not None:
                header.has_means = True
                tensors += [(pb.TENSOR_KIND_MEAN_X, _f32(mean_x, "mean_x", (k,))),
                            (pb.TENSOR_KIND_MEAN_XQ, _f32(mean_xq, "mean_xq", (k,)))]
        else:
            header.calibration = pb.CALIBRATION_KIND_ROWS
            header.has_xx = relative_error
            x = _f32(inputs, "inputs")
            if x.ndim != 2 or x.shape[1] != k:
                raise ValueError(f"inputs must be [D, {k}], got {x.shape}")
            xq = None if quant_inputs is None else _f32(quant_inputs, "quant_inputs", x.shape)
            rows = (x, xq)

        def requests():  # a fresh stream of messages for every attempt
            return _upload_messages(header, tensors, rows, progress)

        return self._with_retries(lambda: self._collect(
            self._quantize_raw(requests(), timeout=self.deadline, metadata=self._metadata), progress))

    def fetch(self, job_id: str, progress=None) -> LayerResult:
        """Follows a job by id and returns its result (resume after a disconnect or a restart)."""
        return self._with_retries(lambda: self._collect(
            self._stub.Watch(pb.WatchRequest(job_id=job_id, include_result=True), timeout=self.deadline,
                             metadata=self._metadata), progress))

    def cancel(self, job_id: str) -> str:
        try:
            r = self._stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=60, metadata=self._metadata)
        except grpc.RpcError as e:
            raise ServerError(e.code(), e.details()) from None
        return pb.JobState.Name(r.state)

    def list_jobs(self) -> list:
        try:
            r = self._stub.ListJobs(pb.ListJobsRequest(), timeout=60, metadata=self._metadata)
        except grpc.RpcError as e:
            raise ServerError(e.code(), e.details()) from None
        return [{"job_id": j.job_id, "layer": j.layer_name, "state": pb.JobState.Name(j.state),
                 "created_unix_ms": j.created_unix_ms} for j in r.jobs]

    # -- many layers -----------------------------------------------------------------------------
    def quantize_many(self, layers: list[dict], max_concurrency: int = 4, progress=None,
                      on_result: Callable[[LayerResult], None] | None = None) -> list[LayerResult]:
        """Quantizes independent layers concurrently (spread over replicas by the channel's
        load-balancing policy); each dict holds quantize()'s arguments. Returns the results in the
        order given. progress(name, state, fraction) as quantize's; on_result(result) as each layer
        finishes (from a worker thread). When layers fail, the others still run to the end and
        QuantizeManyError carries every finished result and each failure."""
        def one(spec):
            spec = dict(spec)
            name = spec.pop("name")
            cb = (lambda s, f, n=name: progress(n, s, f)) if progress else None
            r = self.quantize(name, spec.pop("weight"), progress=cb, **spec)
            if on_result:
                on_result(r)
            return r
        results, failures = [None] * len(layers), {}
        with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as ex:
            futures = {ex.submit(one, spec): i for i, spec in enumerate(layers)}
            for f in as_completed(futures):
                i = futures[f]
                try:
                    results[i] = f.result()
                except Exception as e:  # noqa: BLE001 - reported below, with the finished siblings
                    failures[layers[i]["name"]] = e
        if failures:
            raise QuantizeManyError(results, failures)
        return results

    # -- internals -------------------------------------------------------------------------------
    def _with_retries(self, call):
        delay, give_up, attempt = 0.25, time.monotonic() + self.retry_seconds, 0
        while True:
            attempt += 1
            try:
                return call()
            except ServerError as e:
                wait = max(delay, getattr(e, "retry_after", 0)) + random.random() * 0.25
                if (e.code not in _RETRYABLE or (self.retries and attempt >= self.retries)
                        or time.monotonic() + wait > give_up):
                    raise
                time.sleep(wait)
                delay = min(delay * 2, 8.0)

    def _collect(self, stream, progress) -> LayerResult:
        parts = {pb.RESULT_PART_CODES: bytearray(), pb.RESULT_PART_SCALES: bytearray(), pb.RESULT_PART_BIAS: bytearray()}
        fin, job_id = None, ""
        try:
            for e in stream:
                job_id = e.job_id or job_id
                kind = e.WhichOneof("event")
                if kind == "progress" and progress:
                    progress(pb.JobState.Name(e.progress.state), e.progress.fraction)
                elif kind == "result":
                    buf = parts[e.result.part]
                    if e.result.offset != len(buf):
                        raise ServerError(grpc.StatusCode.DATA_LOSS, "result chunk out of order")
                    buf += e.result.data
                elif kind == "finished":
                    fin = e.finished
        except grpc.RpcError as e:
            err = ServerError(e.code(), e.details())
            for key, value in (e.trailing_metadata() or ()):
                if key == "axeq-retry-after-ms":
                    err.retry_after = int(value) / 1000.0
            raise err from None
        if fin is None:
            raise ServerError(grpc.StatusCode.DATA_LOSS, "stream ended without a summary")
        c, k, g = fin.output_channels, fin.inputs, fin.scale_groups
        codes = np.frombuffer(bytes(parts[pb.RESULT_PART_CODES]), dtype=np.int8).reshape(c, k).copy()
        scales = np.frombuffer(bytes(parts[pb.RESULT_PART_SCALES]), dtype=np.float32).reshape(c, g).copy()
        bias = np.frombuffer(bytes(parts[pb.RESULT_PART_BIAS]), dtype=np.float32).copy() if fin.has_bias else None
        a = fin.activations
        rep = fin.report
        report = {f.name: getattr(rep, f.name) for f in rep.DESCRIPTOR.fields}
        report["group_size"] = fin.group_size  # Finished.group_size: the scales' G (0 = per channel)
        return LayerResult(fin.layer_name, job_id, codes, scales, bias,
                           ActivationQuantizer(a.bits, a.is_signed, a.scale, a.zero_point), report,
                           _cert_dict(fin.certificate))
