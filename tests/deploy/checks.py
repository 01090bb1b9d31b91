"""Checkers for rendered Kubernetes objects (lists of dicts from `kubectl kustomize`) and for the
Dockerfile, after issue 13. Each returns a list of problems, empty when the objects are fine; none of
them reads the cluster. check_manifests.py runs them; breakages.py proves each one can fail."""
import json
import os
import re

RESULTS_DIR = "/var/lib/axeq/results"
POD_KINDS = ("StatefulSet", "Deployment", "DaemonSet", "Job", "ReplicaSet")


def of_kind(objs, kind):
    return [o for o in objs if o.get("kind") == kind]


def pod_specs(objs):
    """Yields (workload name, pod spec) for every pod template."""
    for o in objs:
        if o.get("kind") in POD_KINDS:
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("containers", []) + spec.get("initContainers", [])


def flag(args, name):
    """Returns the value of the last --name=value in args (None if absent; "" for a bare --name)."""
    value = None
    for a in args or []:
        if a == f"--{name}":
            value = ""
        elif a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
    return value


def serving_port(c):
    a = flag(c.get("args", []) + c.get("command", []), "address")
    return int(a.rsplit(":", 1)[1]) if a else None


def tls_served(c):
    args = c.get("args", []) + c.get("command", [])
    return flag(args, "tls-cert") is not None and flag(args, "insecure") is None


def port_number(c, port):
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def quantity(q):
    """Returns a memory quantity ("12Gi", "512Mi", "1G", 1024) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    if not m or (m.group(2) and m.group(2) not in units):
        raise ValueError(f"bad quantity {q!r}")
    return float(m.group(1)) * units.get(m.group(2), 1)


def check_probes(objs):
    """The serving port speaks TLS: plain grpc/httpGet/tcpSocket probes on it cannot pass (or prove
    nothing); exec probes must run the health client with the CA, not --insecure, on that port."""
    bad = []
    for name, spec in pod_specs(objs):
        for c in spec.get("containers", []):
            port = serving_port(c)
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                p = c.get(kind)
                if p is None:
                    if kind != "startupProbe":
                        bad.append(f"{name}/{c['name']}: no {kind}")
                    continue
                for t in ("grpc", "httpGet", "tcpSocket"):
                    if t in p and tls_served(c) and port_number(c, p[t].get("port")) == port:
                        bad.append(f"{name}/{c['name']}: {kind} is a plain {t} probe on TLS port {port}")
                cmd = p.get("exec", {}).get("command", [])
                if cmd:
                    if flag(cmd, "address") is None or serving_port({"args": cmd}) != port:
                        bad.append(f"{name}/{c['name']}: {kind} exec probe does not check port {port}")
                    if tls_served(c) and (flag(cmd, "insecure") is not None or not flag(cmd, "ca")):
                        bad.append(f"{name}/{c['name']}: {kind} exec probe must use --ca, not --insecure, on TLS")
                    if kind == "readinessProbe" and flag(cmd, "any-status") is not None:
                        bad.append(f"{name}/{c['name']}: readiness must require SERVING (no --any-status)")
    return bad


def check_security(objs):
    """Pod Security "restricted" (plus readOnlyRootFilesystem with a writable /tmp)."""
    bad = []
    for name, spec in pod_specs(objs):
        psc = spec.get("securityContext", {})
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            bad.append(f"{name}: pod seccompProfile is not RuntimeDefault")
        for k in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(k):
                bad.append(f"{name}: {k}")
        for v in spec.get("volumes", []):
            if "hostPath" in v:
                bad.append(f"{name}: hostPath volume {v['name']}")
        for c in containers(spec):
            sc, who = c.get("securityContext", {}), f"{name}/{c['name']}"
            if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
                bad.append(f"{who}: runAsNonRoot is not true")
            if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
                bad.append(f"{who}: runAsUser unset or 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                bad.append(f"{who}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                bad.append(f"{who}: privileged")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
                bad.append(f"{who}: capabilities must drop ALL and add nothing but NET_BIND_SERVICE")
            if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                bad.append(f"{who}: seccompProfile is not RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                bad.append(f"{who}: readOnlyRootFilesystem is not true")
            elif not any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])):
                bad.append(f"{who}: read-only root but no volume at /tmp")
            if any("hostPort" in p for p in c.get("ports", [])):
                bad.append(f"{who}: hostPort")
    return bad


def check_resources(objs):
    """Every container requests and limits CPU and memory; the server's admission budget fits the limit
    with headroom; the grace period covers drain delay + grace."""
    bad = []
    for name, spec in pod_specs(objs):
        for c in containers(spec):
            r, who = c.get("resources", {}), f"{name}/{c['name']}"
            for side in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in r.get(side, {}):
                        bad.append(f"{who}: no {side}.{res}")
            budget = flag(c.get("args", []), "memory-budget-mb")
            limit = r.get("limits", {}).get("memory")
            if budget is not None and limit is not None and float(budget) * 2**20 > 0.9 * quantity(limit):
                bad.append(f"{who}: --memory-budget-mb={budget} leaves < 10% of the {limit} limit")
            waits = sum(float(flag(c.get("args", []), f) or 0) for f in ("grace-seconds", "drain-delay-seconds"))
            if waits > spec.get("terminationGracePeriodSeconds", 30):
                bad.append(f"{name}: terminationGracePeriodSeconds < drain delay + grace ({waits:g} s)")
    return bad


def check_topology(objs):
    """Namespace enforcing "restricted"; StatefulSet with a ReadWriteOnce claim per pod at the results dir,
    governed by a headless Service; a ClusterIP Service; PDB and autoscaling/v2 HPA (CPU) on it."""
    bad = []
    ns = of_kind(objs, "Namespace")
    if not ns or (ns[0]["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce") != "restricted":
        bad.append("no Namespace labelled pod-security.kubernetes.io/enforce: restricted")
    sts = of_kind(objs, "StatefulSet")
    if not sts:
        return bad + ["no StatefulSet"]
    s = sts[0]
    sel = s["spec"]["selector"]["matchLabels"]
    claims = {t["metadata"]["name"]: t for t in s["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for c in s["spec"]["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}
    if not any(mounts.get(n) == RESULTS_DIR and t["spec"].get("accessModes") == ["ReadWriteOnce"] for n, t in claims.items()):
        bad.append(f"StatefulSet has no ReadWriteOnce volumeClaimTemplate mounted at {RESULTS_DIR}")
    bad += check_replica_ids(s)
    svcs = {o["metadata"]["name"]: o["spec"] for o in of_kind(objs, "Service")}
    gov = svcs.get(s["spec"].get("serviceName"))
    if not gov or gov.get("clusterIP") != "None" or gov.get("selector") != sel:
        bad.append("StatefulSet's serviceName is not a headless Service selecting its pods")
    if not any(v.get("clusterIP") != "None" and v.get("selector") == sel for v in svcs.values()):
        bad.append("no ClusterIP Service selecting the pods")
    if not any(p["spec"].get("selector", {}).get("matchLabels") == sel for p in of_kind(objs, "PodDisruptionBudget")):
        bad.append("no PodDisruptionBudget selecting the pods")
    hpas = [h for h in of_kind(objs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"].get("name") == s["metadata"]["name"]]
    if not hpas or hpas[0]["apiVersion"] != "autoscaling/v2" or not any(
            m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in hpas[0]["spec"].get("metrics", [])):
        bad.append("no autoscaling/v2 HorizontalPodAutoscaler on CPU for the StatefulSet")
    elif not 1 <= hpas[0]["spec"].get("minReplicas", 1) <= hpas[0]["spec"]["maxReplicas"]:
        bad.append("HPA minReplicas/maxReplicas out of order")
    return bad


def check_replica_ids(sts):
    """Job ids name their pod (--replica-id from the downward API's metadata.name) and peers are found
    at their stable names under the governing headless Service."""
    bad = []
    for c in sts["spec"]["template"]["spec"]["containers"]:
        args, env = c.get("args", []), {e["name"]: e for e in c.get("env", [])}
        rid, tmpl = flag(args, "replica-id"), flag(args, "peer-address-template") or ""
        m = re.fullmatch(r"\$\((\w+)\)", rid or "")
        if not m or env.get(m.group(1), {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
            bad.append(f"{c['name']}: --replica-id is not the pod name from the downward API")
        if not tmpl.startswith("{replica}." + sts["spec"].get("serviceName", "?") + "."):
            bad.append(f"{c['name']}: --peer-address-template {tmpl!r} is not {{replica}}.<headless service>...")
    return bad


def check_network_policy(objs):
    """Ingress to the pods only on the gRPC port from axeq-client pods (and replicas), and on the metrics
    port from Prometheus; no rule open to everyone."""
    bad = []
    sts = of_kind(objs, "StatefulSet")
    sel = sts[0]["spec"]["selector"]["matchLabels"] if sts else {}
    pols = [p for p in of_kind(objs, "NetworkPolicy") if p["spec"].get("podSelector", {}).get("matchLabels") == sel]
    if not pols or "Ingress" not in pols[0]["spec"].get("policyTypes", []):
        return ["no Ingress NetworkPolicy selecting the pods"]
    seen = set()
    for rule in pols[0]["spec"].get("ingress", []):
        peers, ports = rule.get("from", []), [p.get("port") for p in rule.get("ports", [])]
        if not peers or not ports:
            bad.append("NetworkPolicy rule without 'from' or 'ports' admits everyone")
            continue
        for peer in peers:
            labels = {**peer.get("podSelector", {}).get("matchLabels", {}), **peer.get("namespaceSelector", {}).get("matchLabels", {})}
            if "ipBlock" in peer or not peer.get("podSelector", {}).get("matchLabels"):
                bad.append(f"NetworkPolicy peer {peer} is not a labelled pod selector")
            elif any(p in ("grpc", 50051) for p in ports) and labels.get("axeq-client") != "true" and peer["podSelector"]["matchLabels"] != sel:
                bad.append(f"gRPC port admits {peer}, which is neither an axeq-client nor a replica")
            elif any(p in ("metrics", 9464) for p in ports) and "prometheus" not in str(labels):
                bad.append(f"metrics port admits {peer}, which is not Prometheus")
            else:
                seen.update("grpc" if p in ("grpc", 50051) else "metrics" if p in ("metrics", 9464) else str(p) for p in ports)
    for want in ("grpc", "metrics"):
        if want not in seen:
            bad.append(f"NetworkPolicy has no rule for the {want} port")
    return bad


def check_images_and_tls(objs, overlay="dev"):
    """Images were set by kustomize `images:` (no bare base name; prod: a registry image, pinned); the
    server serves TLS with bearer tokens from mounted secrets, never --insecure."""
    bad = []
    for name, spec in pod_specs(objs):
        for c in containers(spec):
            img, who = c.get("image", ""), f"{name}/{c['name']}"
            if "/" not in img:
                bad.append(f"{who}: image {img!r} was not set by kustomize images:")
            if overlay == "prod" and (img.startswith("localhost/") or img.endswith((":dev", ":latest")) or (":" not in img.rsplit("/", 1)[-1] and "@" not in img)):
                bad.append(f"{who}: prod image {img!r} is local or not pinned")
            args = c.get("args", [])
            if flag(args, "insecure") is not None or not flag(args, "tls-cert") or not flag(args, "tls-key") or not flag(args, "tokens-file"):
                bad.append(f"{who}: must serve TLS with --tls-cert/--tls-key/--tokens-file and no --insecure")
                continue
            secret_mounts = {m["mountPath"] for m in c.get("volumeMounts", []) if any(
                v["name"] == m["name"] and "secret" in v for v in spec.get("volumes", []))}
            for f in ("tls-cert", "tls-key", "tokens-file"):
                if os.path.dirname(flag(args, f)) not in secret_mounts:
                    bad.append(f"{who}: --{f} is not in a mounted secret")
    return bad


def check_flags(objs, server_help, probe_help):
    """Every --flag the manifests pass appears in the binaries' --help."""
    bad = []
    for name, spec in pod_specs(objs):
        for c in spec.get("containers", []):
            used = [(a, server_help) for a in c.get("args", [])]
            used += [(a, probe_help) for k in ("readinessProbe", "livenessProbe", "startupProbe")
                     for a in (c.get(k) or {}).get("exec", {}).get("command", [])[1:]]
            for a, help_text in used:
                f = a.split("=", 1)[0]
                if f.startswith("--") and help_text is not None and not re.search(re.escape(f) + r"(?![\w-])", help_text):
                    bad.append(f"{name}/{c['name']}: {f} is not a flag of the binary")
    return bad


def check_base_files(base):
    """No local image literal left in the base (prod must not inherit it)."""
    return [f"{base}/{f}: has a localhost/ image" for f in sorted(os.listdir(base))
            if f.endswith(".yaml") and re.search(r"image:\s*localhost/", open(os.path.join(base, f)).read())]


def check_dockerfile(dockerfile, cmakelists, dockerignore=""):
    """The image builds (every folder the root CMakeLists adds is copied in and not ignored), ships the
    health probe, and its default command serves TLS with tokens from /etc/axeq, never --insecure."""
    bad = []
    dockerfile = re.sub(r"\\\n\s*", " ", dockerfile)  # join continuation lines
    copied = re.findall(r"^COPY\s+(?!--from)(\S+)", dockerfile, re.M)
    ignored = set(dockerignore.split())
    for d in re.findall(r"^\s*add_subdirectory\((\S+?)\)", cmakelists, re.M):
        if d == "bench" and "AXEQ_BUILD_BENCH=OFF" in dockerfile:
            continue
        if not any(c in (".", "./") or d == c or d.startswith(c.rstrip("/") + "/") for c in copied) or d.split("/")[0] in ignored:
            bad.append(f"Dockerfile does not copy {d}/, which CMakeLists.txt adds")
    if not re.search(r"--target [^\n]*axeq-health-probe", dockerfile) or not re.search(r"^COPY --from=", dockerfile, re.M):
        bad.append("Dockerfile's runtime image lacks axeq-health-probe (the probes exec it)")
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        bad.append("Dockerfile's final USER is missing or root")
    cmds = re.findall(r"^CMD\s+(\[.*\])\s*$", dockerfile, re.M)
    cmd = json.loads(cmds[-1]) if cmds else []
    if "--insecure" in cmd or not all(f in cmd for f in ("--tls-cert", "--tls-key", "--tokens-file")):
        bad.append(f"default CMD {cmd} must pass --tls-cert/--tls-key/--tokens-file and not --insecure")
    return bad
