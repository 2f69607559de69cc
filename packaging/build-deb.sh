#!/bin/sh
# Builds .deb packages with cargo-deb from the dist-profile binaries of
# packaging/cross-build.sh (run here first; cargo rebuilds only what changed)
# and the plugins of `make plugins`. Output: target/cross/debian/.
# What goes in the package: [package.metadata.deb] in gateway/Cargo.toml.
#
#   packaging/build-deb.sh [aarch64-unknown-linux-gnu] [armv7-unknown-linux-gnueabihf] [x86_64-unknown-linux-gnu]
#
# Default: all three (arm64, armhf, amd64). cargo-deb is installed when missing.
set -eu
cd "$(dirname "$0")/.."
. packaging/lib.sh

CARGO=${CARGO:-cargo}
[ $# -gt 0 ] || set -- aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf x86_64-unknown-linux-gnu

command -v cargo-deb >/dev/null || $CARGO install cargo-deb --locked

for plugin in sepay_webhook sepay_poll casso_webhook momo_ipn zalopay_callback vnpay_ipn generic_webhook demo_bank chain_relay; do
  [ -f plugins/target/wasm32-wasip2/release/$plugin.wasm ] || { echo "missing plugins/target/wasm32-wasip2/release/$plugin.wasm: run make plugins" >&2; exit 1; }
done

# Each shipped plugin's manifest and signature, and the key that signed them.
CARGO="$CARGO" sh packaging/sign-plugins.sh

# Cargo decides what is stale; nothing is rebuilt when it is up to date.
sh packaging/cross-build.sh "$@"

out=target/cross/debian
mkdir -p "$out"
for target in "$@"; do
  cross_env "$target"
  # --no-build: the binary is the one just built; CARGO_TARGET_DIR tells
  # cargo-deb where (target/cross/<target>/dist/).
  # Its warning that the plugin paths (plugins/target/.../release/) are not
  # cargo's target dir is expected: they are built by `make plugins`.
  status=0
  CARGO_TARGET_DIR=target/cross $CARGO deb -p soundbox-gateway --no-build \
    --target "$target" --profile dist --output "$out" >"$out/cargo-deb.log" 2>&1 || status=$?
  grep -v "does not match the pattern, and will not be built" "$out/cargo-deb.log" || true
  [ "$status" = 0 ] || { echo "cargo deb failed for $target" >&2; exit 1; }
done
ls -l "$out"/*.deb
