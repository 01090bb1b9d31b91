#!/usr/bin/env bash
# Makes the two Secrets the manifests mount, for a development cluster: a throwaway CA, a server
# certificate for every name clients, peers and the probes use, and one bearer token. Production
# should issue the certificate from its own CA (e.g. cert-manager, which also fills ca.crt).
# Usage: deploy/k8s/make-secrets.sh NAMESPACE OUTDIR [PRINCIPAL]
#   then: kubectl apply -f OUTDIR/secrets.yaml; clients verify the server with OUTDIR/ca.crt and send
#   the bearer token in OUTDIR/token.
set -euo pipefail
ns=${1:?namespace}; out=${2:?output folder}; principal=${3:-pipeline}
mkdir -p "$out"; cd "$out"
umask 077
sans="DNS:axeq,DNS:axeq.$ns,DNS:axeq.$ns.svc,DNS:axeq.$ns.svc.cluster.local"
sans+=",DNS:axeq-headless.$ns.svc,DNS:*.axeq-headless.$ns.svc,DNS:axeq-headless.$ns.svc.cluster.local"
sans+=",DNS:*.axeq-headless.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=axeq dev CA ($ns)" \
  -keyout ca.key -out ca.crt -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=axeq.$ns.svc" -keyout tls.key -out tls.csr 2>/dev/null
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 -out tls.crt \
  -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans") 2>/dev/null
rm -f tls.csr ca.srl
openssl rand -hex 24 > token                        # the client's bearer token (axeq --token-file token)
printf '%s %s\n' "$(cat token)" "$principal" > tokens  # the server's tokens file
if ! command -v kubectl >/dev/null; then
  echo "wrote $out/{ca.crt,tls.crt,tls.key,tokens,token}; no kubectl here, so no $out/secrets.yaml"; exit 0
fi
{
  kubectl create secret generic axeq-server-tls -n "$ns" --type=kubernetes.io/tls \
    --from-file=tls.crt --from-file=tls.key --from-file=ca.crt --dry-run=client -o yaml
  echo ---
  kubectl create secret generic axeq-tokens -n "$ns" --from-file=tokens --dry-run=client -o yaml
} > secrets.yaml
echo "wrote $out/secrets.yaml (apply it), $out/ca.crt and $out/token (for clients)"
