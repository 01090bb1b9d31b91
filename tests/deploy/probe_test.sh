#!/usr/bin/env bash
# axeq-health-probe against a real axeq-server serving TLS with the certificates deploy/k8s/make-secrets.sh
# makes (so that script is exercised too): SERVING over verified TLS exits 0 with --server-name=axeq as
# in the manifests; a wrong CA, plaintext against TLS, a missing CA file or a closed port exit 2;
# while the server drains, readiness (plain) exits 1 and liveness (--any-status) still exits 0.
# Usage: probe_test.sh AXEQ_SERVER AXEQ_HEALTH_PROBE REPO
set -euo pipefail
server=$1; probe=$2; repo=$3
d=$(mktemp -d); pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$d"' EXIT
"$repo/deploy/k8s/make-secrets.sh" axeq-test "$d/s" >/dev/null
"$repo/deploy/k8s/make-secrets.sh" axeq-other "$d/other" >/dev/null
"$server" --address 127.0.0.1:0 --tls-cert "$d/s/tls.crt" --tls-key "$d/s/tls.key" --tokens-file "$d/s/tokens" \
  --workers 1 --compute-threads 1 --drain-delay-seconds 5 --grace-seconds 1 2> "$d/log" &
pid=$!
port=""
for _ in $(seq 100); do
  port=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$d/log" | head -1); [ -n "$port" ] && break; sleep 0.1
done
[ -n "$port" ] || { echo "server did not start:"; cat "$d/log"; exit 1; }
expect() {  # expect RC DESCRIPTION PROBE-ARGS...
  local want=$1 what=$2; shift 2
  set +e; "$probe" --address "127.0.0.1:$port" --timeout-seconds 2 "$@" 2> "$d/err"; local rc=$?; set -e
  if [ "$rc" -ne "$want" ]; then echo "FAIL: $what: exit $rc, expected $want ($(cat "$d/err"))"; exit 1; fi
  echo "ok: $what (exit $rc) $(cat "$d/err")"
}
expect 0 "SERVING over TLS" --ca "$d/s/ca.crt" --server-name axeq
expect 0 "liveness over TLS" --ca "$d/s/ca.crt" --server-name axeq --any-status
expect 2 "CA of another cluster" --ca "$d/other/ca.crt" --server-name axeq
expect 2 "name not in the certificate" --ca "$d/s/ca.crt" --server-name evil.example
expect 2 "plaintext against TLS" --insecure
expect 2 "missing CA file" --ca "$d/nope.crt"
expect 2 "no --ca and no --insecure"
kill -TERM "$pid"; sleep 1
expect 1 "draining: not ready" --ca "$d/s/ca.crt" --server-name axeq
expect 0 "draining: still alive" --ca "$d/s/ca.crt" --server-name axeq --any-status
wait "$pid" || true; pid=""
expect 2 "server gone" --ca "$d/s/ca.crt" --server-name axeq
echo "probe test passed"
