#!/bin/sh
# Builds the Python hello connector into a WebAssembly component.
#
#   pip install -r requirements.txt    # componentize-py, pinned
#   ./build.sh [OUT]                   # default: target/hello-connector/hello_python.wasm
#
# The WIT contract comes from $SOUNDBOX_WIT, a folder holding connector.wit;
# by default this repository's plugin-sdk/wit. Outside the repository, point
# it at a copy of the SDK's wit/ folder:
#
#   SOUNDBOX_WIT=/path/to/soundbox-plugin-sdk/wit ./build.sh out/hello.wasm
#
# componentize-py generates the `wit_world` bindings from the WIT while it
# builds; they are not kept. For an editor's completion, generate stubs with
# `componentize-py -d <wit> -w webhook-connector bindings <dir>`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${SOUNDBOX_WIT:-}" ]; then
  wit=$SOUNDBOX_WIT
  default_out=$PWD/hello_python.wasm
else
  root=$(cd "$here/../../.." && pwd)
  wit=$root/plugin-sdk/wit
  default_out=$root/target/hello-connector/hello_python.wasm
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
# No bytecode caches in the source tree.
PYTHONDONTWRITEBYTECODE=1 componentize-py \
  -d "$wit" -w webhook-connector \
  componentize app -o "$out"
