#!/usr/bin/env bash
# Starts the image, quantizes a real layer through it with the CLI, verifies the certificates,
# checks /metrics and the health probe the Kubernetes manifests exec, and that the image's default
# command refuses to start without its TLS files. Opt-in (needs podman): AXEQ_CONTAINER_TEST=1 ./scripts/test.sh runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-localhost/axeq-server:dev}
AXEQ=${AXEQ:-$(ls build/cli/axeq build/tools/axeq build/client/axeq 2>/dev/null | head -n1)}
PORT=${AXEQ_SMOKE_PORT:-50551}; MPORT=$((PORT + 1))
name=axeq-smoke-$$
podman --runtime runc run -d --rm --name "$name" --network=host --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
  "$TAG" --address 127.0.0.1:$PORT --metrics-address 127.0.0.1:$MPORT --insecure --results-dir /var/lib/axeq/results >/dev/null
trap 'podman --runtime runc stop -t 5 "$name" >/dev/null 2>&1 || true' EXIT
for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
d=$(mktemp -d)
podman --runtime runc exec "$name" /usr/local/bin/axeq-health-probe --insecure --address 127.0.0.1:$PORT
if podman --runtime runc run --rm --network=none --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 "$TAG" > $d/refused 2>&1; then
  echo "the default command started without TLS files"; exit 1
fi
grep -q 'cannot read' $d/refused || { cat $d/refused; exit 1; }
$AXEQ llama2c-capture --checkpoint examples/data/stories260K.bin --out-model $d/l.st --out-calibration $d/c.st --sequences 2 --length 64
$AXEQ --server 127.0.0.1:$PORT quantize --model $d/l.st --calibration $d/c.st --acc-bits 16 --layers layers.0.attention.wq,layers.0.feed_forward.w2 --out $d/r.st --quiet
$AXEQ verify $d/r.st
exec 3<>/dev/tcp/127.0.0.1/$MPORT; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; grep -q 'axeq_certificates_total{verdict="safe"} 2' <&3
echo "container smoke test passed"
