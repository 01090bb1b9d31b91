"""Deliberately broken copies of rendered objects, one per property: each checker in checks.py must
reject its breakage, or the test that relies on it could never fail."""
import copy
import re

from checks import (check_dockerfile, check_flags, check_images_and_tls, check_network_policy, check_probes, check_resources,
                    check_security, check_topology, of_kind)
from live import check_live


def sts_container(objs):
    return of_kind(objs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]


def breakages():
    """(checker, description, mutation) triples: each mutation must make its checker complain."""
    def c(o):
        return sts_container(o)

    def pod(o):
        return of_kind(o, "StatefulSet")[0]["spec"]["template"]["spec"]

    return [
        (check_probes, "grpc readiness on TLS port", lambda o: c(o).update(readinessProbe={"grpc": {"port": 50051}})),
        (check_probes, "httpGet liveness on named TLS port", lambda o: c(o).update(livenessProbe={"httpGet": {"port": "grpc", "path": "/"}})),
        (check_probes, "exec probe --insecure", lambda o: c(o)["readinessProbe"]["exec"]["command"].append("--insecure")),
        (check_probes, "readiness --any-status", lambda o: c(o)["readinessProbe"]["exec"]["command"].append("--any-status")),
        (check_probes, "no liveness", lambda o: c(o).pop("livenessProbe")),
        (check_security, "no pod seccomp", lambda o: pod(o)["securityContext"].pop("seccompProfile")),
        (check_security, "privilege escalation", lambda o: c(o)["securityContext"].update(allowPrivilegeEscalation=True)),
        (check_security, "caps not dropped", lambda o: c(o)["securityContext"].update(capabilities={"add": ["SYS_ADMIN"]})),
        (check_security, "root user", lambda o: c(o)["securityContext"].update(runAsUser=0)),
        (check_security, "writable root", lambda o: c(o)["securityContext"].pop("readOnlyRootFilesystem")),
        (check_security, "no /tmp", lambda o: c(o).update(volumeMounts=[m for m in c(o)["volumeMounts"] if m["mountPath"] != "/tmp"])),
        (check_security, "hostPath", lambda o: pod(o)["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
        (check_resources, "no limits", lambda o: c(o)["resources"].pop("limits")),
        (check_resources, "budget over limit", lambda o: c(o)["args"].append("--memory-budget-mb=99999999")),
        (check_resources, "short grace period", lambda o: pod(o).update(terminationGracePeriodSeconds=5)),
        (check_topology, "no PDB", lambda o: o.remove(of_kind(o, "PodDisruptionBudget")[0])),
        (check_topology, "no HPA", lambda o: o.remove(of_kind(o, "HorizontalPodAutoscaler")[0])),
        (check_topology, "no claim templates", lambda o: of_kind(o, "StatefulSet")[0]["spec"].pop("volumeClaimTemplates")),
        (check_topology, "RWX claim", lambda o: of_kind(o, "StatefulSet")[0]["spec"]["volumeClaimTemplates"][0]["spec"].update(accessModes=["ReadWriteMany"])),
        (check_topology, "governing Service not headless", lambda o: [s["spec"].update(clusterIP="10.0.0.1") for s in of_kind(o, "Service")]),
        (check_topology, "namespace not restricted", lambda o: of_kind(o, "Namespace")[0]["metadata"]["labels"].update({"pod-security.kubernetes.io/enforce": "baseline"})),
        (check_topology, "replica id not the pod name", lambda o: c(o)["args"].append("--replica-id=axeq")),
        (check_topology, "peers outside the headless Service", lambda o: c(o)["args"].append("--peer-address-template={replica}.axeq:50051")),
        (check_network_policy, "no NetworkPolicy", lambda o: o.remove(of_kind(o, "NetworkPolicy")[0])),
        (check_network_policy, "gRPC open to all pods", lambda o: of_kind(o, "NetworkPolicy")[0]["spec"]["ingress"][0]["from"].append({"podSelector": {}})),
        (check_network_policy, "rule without from", lambda o: of_kind(o, "NetworkPolicy")[0]["spec"]["ingress"].append({"ports": [{"port": 9464}]})),
        (check_network_policy, "metrics open to clients", lambda o: of_kind(o, "NetworkPolicy")[0]["spec"]["ingress"][1].update({"from": [{"podSelector": {"matchLabels": {"axeq-client": "true"}}}]})),
        (check_images_and_tls, "bare base image", lambda o: c(o).update(image="axeq-server")),
        (check_images_and_tls, "insecure server", lambda o: c(o)["args"].append("--insecure")),
        (check_images_and_tls, "cert outside a secret", lambda o: c(o).update(args=[a for a in c(o)["args"] if not a.startswith("--tls-cert")] + ["--tls-cert=/srv/tls.crt"])),
    ]


def self_test(objs, dockerfile, cmakelists, dockerignore, live=None):
    """Returns the breakages a checker failed to notice (and any complaint about the unbroken inputs).
    live: (server_bin, probe_bin, repo) to also break check_live (a name the certificate lacks, a flag
    the server rejects)."""
    missed = []
    if live:
        for what, mutate in [
                ("probe verifies a name not in the certificate", lambda o: sts_container(o)["readinessProbe"]["exec"].update(command=[
                    "--server-name=evil.example" if a.startswith("--server-name") else a
                    for a in sts_container(o)["readinessProbe"]["exec"]["command"]])),
                ("server flag that does not exist", lambda o: sts_container(o)["args"].append("--no-such-flag"))]:
            broken = copy.deepcopy(objs)
            mutate(broken)
            if not check_live(broken, *live):
                missed.append(f"check_live accepted a broken pod: {what}")
    image = (dockerfile, cmakelists, dockerignore)
    for what, broken in [
            ("deploy/health not copied", (re.sub(r"^COPY (\.|deploy\S*) .*$", "COPY core core", dockerfile, flags=re.M), cmakelists, dockerignore)),
            ("deploy ignored", (dockerfile, cmakelists, dockerignore + "\ndeploy\n")),
            ("probe not shipped", (dockerfile.replace("axeq-health-probe", "axeq-healthprobe"), cmakelists, dockerignore)),
            ("runs as root", (dockerfile.replace("USER 10001:10001", "USER root"), cmakelists, dockerignore)),
            ("CMD --insecure", (dockerfile.replace('CMD ["', 'CMD ["--insecure", "'), cmakelists, dockerignore))]:
        if check_dockerfile(*image):
            missed.append(f"check_dockerfile rejects the unbroken Dockerfile: {check_dockerfile(*image)}")
            break
        if not check_dockerfile(*broken):
            missed.append(f"check_dockerfile accepted a broken Dockerfile: {what}")
    for checker, what, mutate in breakages():
        if checker(objs):
            missed.append(f"{checker.__name__} rejects the unbroken objects: {checker(objs)}")
            continue
        broken = copy.deepcopy(objs)
        mutate(broken)
        if not checker(broken):
            missed.append(f"{checker.__name__} accepted a broken object: {what}")
    prod = copy.deepcopy(objs)
    sts_container(prod)["image"] = "localhost/axeq-server:dev"
    if not check_images_and_tls(prod, "prod"):
        missed.append("check_images_and_tls accepted a localhost:dev image in prod")
    if not check_flags(objs, "--address only", "--address only"):
        missed.append("check_flags accepted flags missing from --help")
    return missed
