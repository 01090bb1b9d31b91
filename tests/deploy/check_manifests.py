#!/usr/bin/python3
"""Renders every kustomize overlay in deploy/k8s/overlays with `kubectl kustomize` and checks the objects
against what issue 13 asks of a deployment that works: probes that can pass with TLS on the serving port,
Pod Security "restricted", resources, StatefulSet + per-pod volumes + headless Service, PDB, HPA,
NetworkPolicy, images set through kustomize `images:`, and (given the binaries) only flags the server and
the probe accept. Each checker returns a list of problems; a self-test first feeds each one a deliberately
broken copy of a rendered overlay and fails if the checker does not notice.
With both binaries it also starts the server with each overlay's exact args and runs its exact probe
commands (live.py).
Usage: check_manifests.py [--repo DIR] [--server-bin axeq-server] [--probe-bin axeq-health-probe]"""
import argparse
import os
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:
    sys.exit("FAIL: PyYAML is missing; install python3-yaml (scripts/setup.sh lists it)")

from breakages import self_test
from live import check_live
from checks import (check_base_files, check_dockerfile, check_flags, check_images_and_tls, check_network_policy,
                    check_probes, check_resources, check_security, check_topology)


def render(overlay):
    """Returns the objects `kubectl kustomize overlay` prints."""
    out = subprocess.run(["kubectl", "kustomize", overlay], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {overlay} failed:\n{out.stderr}")
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def read(path):
    """Returns the file's text, "" when it does not exist."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def help_text(binary):
    if not binary:
        return None
    out = subprocess.run([binary, "--help"], capture_output=True, text=True)
    return out.stdout + out.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ap.add_argument("--server-bin", help="axeq-server: also check that every flag the manifests pass exists")
    ap.add_argument("--probe-bin", help="axeq-health-probe: likewise for the probes' flags")
    a = ap.parse_args()
    if shutil.which("kubectl") is None:
        print("FAIL: kubectl not found on PATH; it renders the overlays (`kubectl kustomize`). Install kubectl "
              "(https://kubernetes.io/docs/tasks/tools/) and rerun.", file=sys.stderr)
        return 1
    k8s = os.path.join(a.repo, "deploy", "k8s")
    overlays = sorted(os.listdir(os.path.join(k8s, "overlays")))
    image = tuple(read(os.path.join(a.repo, f)) for f in ("Dockerfile", "CMakeLists.txt", ".dockerignore"))
    live = (a.server_bin, a.probe_bin, a.repo) if a.server_bin and a.probe_bin else None
    problems = [f"self-test: {m}" for m in self_test(render(os.path.join(k8s, "overlays", overlays[0])), *image, live=live)]
    problems += check_dockerfile(*image)
    problems += check_base_files(os.path.join(k8s, "base"))
    server_help, probe_help = help_text(a.server_bin), help_text(a.probe_bin)
    for ov in overlays:
        objs = render(os.path.join(k8s, "overlays", ov))
        found = (check_probes(objs) + check_security(objs) + check_resources(objs) + check_topology(objs) +
                 check_network_policy(objs) + check_images_and_tls(objs, ov) + check_flags(objs, server_help, probe_help) +
                 (check_live(objs, *live) if live else []))
        problems += [f"{ov}: {p}" for p in found]
        print(f"{ov}: {len(objs)} objects, {len(found)} problems")
    for p in problems:
        print("FAIL:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
