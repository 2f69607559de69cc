#!/bin/sh
# Builds the JavaScript hello connector into a WebAssembly component.
#
#   npm ci                 # componentize-js, pinned by package-lock.json
#   npm run build [-- OUT] # default: target/hello-connector/hello_js.wasm
#
# The gateway gives plugins WASI without outgoing HTTP, so the `http`
# feature (fetch) and `fetch-event` are left out: the component would not
# link otherwise. stdio stays, so an uncaught exception reaches the log.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${1:-$root/target/hello-connector/hello_js.wasm}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
cd "$here"
node_modules/.bin/componentize-js hello.js \
  --wit "$root/plugin-sdk/wit" --world-name webhook-connector \
  --disable http fetch-event \
  -o "$out"
