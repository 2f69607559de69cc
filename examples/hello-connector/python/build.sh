#!/bin/sh
# Builds the Python hello connector into a WebAssembly component.
#
#   pip install -r requirements.txt    # componentize-py, pinned
#   ./build.sh [OUT]                   # default: target/hello-connector/hello_python.wasm
#
# componentize-py generates the `wit_world` bindings from the WIT while it
# builds; they are not kept. For an editor's completion, generate stubs with
# `componentize-py -d <wit> -w webhook-connector bindings <dir>`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${1:-$root/target/hello-connector/hello_python.wasm}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
cd "$here"
# No bytecode caches in the source tree.
PYTHONDONTWRITEBYTECODE=1 componentize-py \
  -d "$root/plugin-sdk/wit" -w webhook-connector \
  componentize app -o "$out"
