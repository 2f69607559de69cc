#!/bin/sh
# Builds the JavaScript hello connector into a WebAssembly component.
#
#   npm ci                 # componentize-js, pinned by package-lock.json
#   npm run build [-- OUT] # default: target/hello-connector/hello_js.wasm
#
# The WIT contract comes from $SOUNDBOX_WIT, a folder holding connector.wit;
# by default this repository's plugin-sdk/wit. Outside the repository, point
# it at a copy of the SDK's wit/ folder:
#
#   SOUNDBOX_WIT=/path/to/soundbox-plugin-sdk/wit npm run build -- out/hello.wasm
#
# The gateway gives plugins WASI without outgoing HTTP, so the `http`
# feature (fetch) and `fetch-event` are left out: the component would not
# link otherwise. stdio stays, so an uncaught exception reaches the log.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${SOUNDBOX_WIT:-}" ]; then
  wit=$SOUNDBOX_WIT
  default_out=$PWD/hello_js.wasm
else
  root=$(cd "$here/../../.." && pwd)
  wit=$root/plugin-sdk/wit
  default_out=$root/target/hello-connector/hello_js.wasm
fi
if [ ! -f "$wit/connector.wit" ]; then
  echo "build.sh: no connector.wit in $wit (set SOUNDBOX_WIT to the SDK's wit folder)" >&2
  exit 1
fi
wit=$(cd "$wit" && pwd)
out=${1:-$default_out}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
cd "$here"
node_modules/.bin/componentize-js hello.js \
  --wit "$wit" --world-name webhook-connector \
  --disable http fetch-event \
  -o "$out"
