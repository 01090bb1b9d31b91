"""Runs a rendered pod's exact server args and probe commands on loopback: the paths under /etc/axeq and
/var/lib/axeq/results are pointed at a temporary folder holding deploy/k8s/make-secrets.sh's files,
$(VAR) references are expanded as the kubelet would for a pod named axeq-0, and the listen addresses are
moved to free loopback ports. The server must start and every probe must exit 0 (readiness and
liveness alike), i.e. the manifests' flags and certificate names work together, not only parse."""
import math
import os
import re
import socket
import subprocess
import tempfile
import time

from checks import of_kind


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_env(c):
    """Returns the container's env as the kubelet would fill it for pod axeq-0 in namespace axeq-dev."""
    env = {}
    for e in c.get("env", []):
        src = e.get("valueFrom", {})
        field = src.get("fieldRef", {}).get("fieldPath")
        res = src.get("resourceFieldRef", {}).get("resource", "")
        if "value" in e:
            env[e["name"]] = e["value"]
        elif field in ("metadata.name", "metadata.namespace"):
            env[e["name"]] = "axeq-0" if field == "metadata.name" else "axeq-dev"
        elif res == "limits.cpu":
            cpu = str(c["resources"]["limits"]["cpu"])
            env[e["name"]] = str(-(-int(cpu[:-1]) // 1000) if cpu.endswith("m") else math.ceil(float(cpu)))
    return env


def localise(arg, tmp, env, ports):
    """Rewrites one rendered argument for a run on this machine."""
    arg = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
    arg = arg.replace("/etc/axeq/tls/", f"{tmp}/s/").replace("/etc/axeq/auth/", f"{tmp}/s/")
    arg = arg.replace("/var/lib/axeq/results", f"{tmp}/results")
    return re.sub(r"(0\.0\.0\.0|127\.0\.0\.1):(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(2))]}", arg)


def check_live(objs, server_bin, probe_bin, repo):
    """Returns problems found starting the first StatefulSet's container as rendered."""
    c = of_kind(objs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([os.path.join(repo, "deploy", "k8s", "make-secrets.sh"), "axeq-dev", f"{tmp}/s"],
                       check=True, capture_output=True)
        os.mkdir(f"{tmp}/results")
        env = pod_env(c)
        ports = {p["containerPort"]: free_port() for p in c.get("ports", [])}
        args = [localise(a, tmp, env, ports) for a in c.get("args", [])]
        with open(f"{tmp}/log", "w") as log:
            server = subprocess.Popen([server_bin] + args, stdout=log, stderr=log)
        try:
            return probe_all(c, server, probe_bin, tmp, env, ports)
        finally:
            server.kill()  # not terminate: the manifests' drain delay would hold the test for seconds
            server.wait(timeout=30)


def probe_all(c, server, probe_bin, tmp, env, ports):
    """Runs each exec probe; the first is retried for up to 20 s while the server starts."""
    bad, first = [], True
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = (c.get(kind) or {}).get("exec", {}).get("command", [])
        if not cmd:
            continue
        cmd = [probe_bin] + [localise(a, tmp, env, ports) for a in cmd[1:]]
        deadline = time.monotonic() + (20 if first else 0)
        first = False
        while True:
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.2)
        if server.poll() is not None:
            return bad + [f"the server exited ({server.returncode}) with the rendered args: {open(f'{tmp}/log').read()[-600:]}"]
        if out.returncode != 0:
            bad.append(f"{kind} {' '.join(cmd)} exits {out.returncode}: {out.stderr.strip()}")
    return bad
