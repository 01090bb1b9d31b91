#!/usr/bin/python3
"""Measures one axeq-server replica for the sizing guide in docs/deploy.md. For each layer shape CxK it
starts a fresh server (so the process's peak RSS is that job's), uploads statistics (a random positive
definite gram = X~^T X~ / D, no rows) and a random weight, runs OPTQ + AXE (W4A8, P=16, T=128), and prints
one JSON line: engine seconds (the server's report), wall seconds (upload + queue + engine + download),
the server's CPU seconds for the job (user + system: what the job costs on dedicated cores, whatever else
runs), its RSS before the job and its peak (VmHWM), and the load average around the run (the machine is
shared, so say under what load a figure was taken).
Usage: PYTHONPATH=<build>/python deploy/sizing.py --server-bin <build>/server/axeq-server 4096x4096 4096x14336"""
import argparse
import json
import os
import re
import subprocess
import tempfile
import time

import numpy as np

from axeq.client import Client
from axeq.config import ActivationQuantizer, Config


def status_kib(pid, field):
    """Returns /proc/<pid>/status's field (VmRSS, VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def cpu_seconds(pid):
    """Returns the user + system CPU time the process has used, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(binary, threads, log):
    proc = subprocess.Popen([binary, "--address", "127.0.0.1:0", "--insecure", "--workers", "1",
                             "--compute-threads", str(threads), "--memory-budget-mb", "20000"],
                            stderr=log, stdout=subprocess.DEVNULL)
    for _ in range(200):
        m = re.search(r'"port":(\d+)', open(log.name).read())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {open(log.name).read()}")


def measure(binary, c, k, threads, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, k), dtype=np.float32) * 0.02
    b = rng.standard_normal((k, 64), dtype=np.float32)
    gram = b @ b.T / 64 + np.eye(k, dtype=np.float32) * 0.1  # rank 64 + a floor: positive definite
    act = ActivationQuantizer(bits=8, signed=False, scale=0.02, zero_point=128)
    cfg = Config(algorithm="optq", method="axe", weight_bits=4, input_bits=8, accumulator_bits=16, tile_size=128)
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        proc, port = start_server(binary, threads, log)
        try:
            rss0, cpu0 = status_kib(proc.pid, "VmRSS"), cpu_seconds(proc.pid)
            load0 = os.getloadavg()[0]
            t0 = time.monotonic()
            with Client(f"127.0.0.1:{port}", deadline=3600) as cl:
                r = cl.quantize(f"l{c}x{k}", w, gram=gram, samples=4096, activation=act, config=cfg)
            wall = time.monotonic() - t0
            peak, cpu = status_kib(proc.pid, "VmHWM"), cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"shape": f"{c}x{k}", "threads": threads, "engine_s": round(r.report.get("seconds", float("nan")), 2),
            "wall_s": round(wall, 2), "server_cpu_s": round(cpu, 1), "rss_before_mib": rss0 // 1024, "peak_rss_mib": peak // 1024,
            "job_peak_mib": (peak - rss0) // 1024, "upload_mib": round((gram.nbytes + w.nbytes) / 2**20),
            "certificate_safe": bool(r.certificate.get("safe")) if isinstance(r.certificate, dict) else None,
            "loadavg_before": round(load0, 2), "loadavg_after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--threads", type=int, default=2, help="--compute-threads of the server")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("shapes", nargs="+", help="CxK, e.g. 4096x14336 (C outputs, K inputs)")
    a = ap.parse_args()
    for s in a.shapes:
        c, k = (int(v) for v in s.lower().split("x"))
        print(json.dumps(measure(a.server_bin, c, k, a.threads, a.seed)), flush=True)


if __name__ == "__main__":
    main()
