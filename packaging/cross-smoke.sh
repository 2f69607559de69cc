#!/usr/bin/env bash
# Smoke test of a cross-built gateway under qemu-user: the default config
# (embedded MQTT broker, Speaker API simulator, the SePay webhook plugin) on
# free loopback ports in a temp dir; waits until the webhook port listens,
# posts the README's sample SePay webhook dated now, expects 200
# {"success":true}, checks the log shows the payment logged and announced by
# the simulated speaker, then SIGTERM and a clean exit.
#
#   packaging/cross-smoke.sh aarch64-unknown-linux-gnu|armv7-unknown-linux-gnueabihf|x86_64-unknown-linux-gnu
#
# Needs the binary (packaging/cross-build.sh, or BIN=path) and the plugins
# (make plugins). STARTUP_TIMEOUT (seconds) bounds the wait for the port:
# under qemu, cranelift (aarch64) or the Pulley compile (armv7) of the plugin
# is slow. KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

target=${1:?usage: $0 <target-triple>}
case "$target" in
  aarch64-unknown-linux-gnu) run=(qemu-aarch64-static -L /usr/aarch64-linux-gnu); timeout=${STARTUP_TIMEOUT:-300} ;;
  armv7-unknown-linux-gnueabihf) run=(qemu-arm-static -L /usr/arm-linux-gnueabihf); timeout=${STARTUP_TIMEOUT:-600} ;;
  x86_64-unknown-linux-gnu) run=(); timeout=${STARTUP_TIMEOUT:-120} ;;
  *) echo "FAIL: unsupported target $target" >&2; exit 2 ;;
esac
bin=${BIN:-target/cross/$target/dist/soundbox-gateway}
plugin=$root/plugins/target/wasm32-wasip2/release/sepay_webhook.wasm
payload=$root/examples/payloads/sepay-webhook.json

fail() { echo "FAIL [$target]: $*" >&2; exit 1; }
[ -x "$bin" ] || fail "no binary at $bin (run packaging/cross-build.sh $target)"
[ -f "$plugin" ] || fail "no plugin at $plugin (run make plugins)"
if [ ${#run[@]} -gt 0 ] && { ! command -v "${run[0]}" >/dev/null || [ ! -d "${run[2]}/lib" ]; }; then
  # qemu-user-static and the target's libc (the -L prefix), from Debian.
  . packaging/lib.sh
  WITH_QEMU=1 cross_tools "$target"
fi
command -v curl >/dev/null || fail "curl not found"
command -v python3 >/dev/null || fail "python3 not found (picks free ports)"

tmp=$(mktemp -d -t soundbox-smoke.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# Three free loopback ports: webhooks, admin, embedded MQTT broker.
read -r port admin mqtt < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

# The default config with those ports, the plugin by absolute path and the
# state in the temp dir.
sed -E \
  -e "s|^listen = .*|listen = \"127.0.0.1:$port\"|" \
  -e "s|^admin_listen = .*|admin_listen = \"127.0.0.1:$admin\"|" \
  -e "s|^embedded_listen = .*|embedded_listen = \"127.0.0.1:$mqtt\"|" \
  -e "s|^data_dir = .*|data_dir = \"$tmp/data\"|" \
  -e "s|^plugin = \"plugins/|plugin = \"$root/plugins/|" \
  config.toml >"$tmp/config.toml"
for want in "127.0.0.1:$port" "127.0.0.1:$admin" "127.0.0.1:$mqtt" "$plugin"; do
  grep -qF "\"$want\"" "$tmp/config.toml" || fail "config.toml changed shape: could not set $want in the temp config"
done

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

echo "== $target: $bin ($(stat -c %s "$bin") bytes) ${run[*]:+under ${run[*]}}"
"${run[@]}" "$bin" --version
log=$tmp/gateway.log
t0=$(now)
"${run[@]}" "$bin" run --config "$tmp/config.toml" 2>"$log" &
pid=$!

# Ready when the webhook port accepts connections (ingress binds last).
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; fail "the gateway exited during startup"; }
  if awk -v a="$t0" -v b="$(now)" -v t="$timeout" 'BEGIN { exit !(b - a > t) }'; then
    cat "$log" >&2; fail "not listening on 127.0.0.1:$port after ${timeout}s"
  fi
  sleep 0.5
done
startup=$(since "$t0")
echo "listening after ${startup}s"
grep -E "plugin loaded|webhook ingress listening" "$log" | sed 's/^/  log: /'

# The README's sample, dated now (Vietnam time) so the speaker announces it.
body=$(sed -E "s/(\"transactionDate\": )\"[^\"]*\"/\\1\"$(date -u -d '+7 hours' '+%Y-%m-%d %H:%M:%S')\"/" "$payload")
t1=$(now)
response=$(curl -sS --max-time 120 -o "$tmp/reply" -w '%{http_code}' -X POST "http://127.0.0.1:$port/hooks/sepay" \
  -H 'Content-Type: application/json' -H 'Authorization: Apikey demo-key-change-me' --data "$body") || { cat "$log" >&2; fail "webhook request failed"; }
webhook=$(since "$t1")
reply=$(cat "$tmp/reply")
echo "webhook: HTTP $response $reply in ${webhook}s"
[ "$response" = 200 ] || { cat "$log" >&2; fail "webhook answered $response, expected 200"; }
[[ "$reply" == *'"success":true'* ]] || fail "webhook reply $reply, expected {\"success\":true}"

# Logged, then announced by the simulated speaker.
t2=$(now)
until grep -q "speaker plays" "$log"; do
  if awk -v a="$t2" -v b="$(now)" 'BEGIN { exit !(b - a > 60) }'; then
    cat "$log" >&2; fail "no 'speaker plays' in the log 60 s after the webhook"
  fi
  sleep 0.2
done
grep -q "balance change logged" "$log" || { cat "$log" >&2; fail "no 'balance change logged' in the log"; }
grep -E "balance change logged|speaker plays" "$log" | sed 's/^/  log: /'
announced=$(since "$t1")
echo "announced ${announced}s after the webhook was sent"

# Which code the engine ran: the cached compiled plugin names its target.
cwasm=$(ls "$tmp"/data/plugin-cache/*.cwasm 2>/dev/null | head -1 || true)
if [ -n "$cwasm" ]; then
  engine=$(grep -aoE "pulley(32|64)[a-z_]*|aarch64|armv7|x86_64" "$cwasm" | sort | uniq -c | sort -rn | head -1 | awk '{print $2}')
  echo "compiled plugin: $(stat -c %s "$cwasm") bytes, target ${engine:-unknown}"
fi

t3=$(now)
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
stop=$(since "$t3")
[ "$status" = 0 ] || { cat "$log" >&2; fail "exit status $status after SIGTERM"; }
grep -qE ": stopped$" "$log" || { cat "$log" >&2; fail "no 'stopped' in the log after SIGTERM"; }
grep -E "ERROR|panicked" "$log" && fail "errors in the log"
echo "SIGTERM: clean exit in ${stop}s"
echo "PASS [$target]: startup ${startup}s, webhook ${webhook}s, announced ${announced}s, shutdown ${stop}s"
