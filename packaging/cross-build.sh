#!/bin/sh
# Builds the gateway with the dist profile (root Cargo.toml) for each target
# given (default: the two Raspberry Pi targets), installing the Debian cross
# toolchain and the Rust target when missing. Binaries land in
#   target/cross/<target>/dist/soundbox-gateway
# A separate target dir (target/cross) keeps these long builds from holding
# the cargo lock of target/ that `make build` / `make test` use.
#
#   packaging/cross-build.sh [aarch64-unknown-linux-gnu] [armv7-unknown-linux-gnueabihf] [x86_64-unknown-linux-gnu]
set -eu
cd "$(dirname "$0")/.."
. packaging/lib.sh

CARGO=${CARGO:-cargo}
[ $# -gt 0 ] || set -- aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf

for target in "$@"; do
  cross_toolchain "$target" >/dev/null
  cross_tools "$target"
done

for target in "$@"; do
  cross_env "$target"
  echo "== $target (dist profile)"
  start=$(date +%s)
  # nice: the machine is usually shared with other builds.
  nice -n 15 $CARGO build --locked -p soundbox-gateway --profile dist \
    --target "$target" --target-dir target/cross
  bin=target/cross/$target/dist/soundbox-gateway
  size=$(stat -c %s "$bin")
  echo "$target: $bin $(awk "BEGIN{printf \"%.1f MB\", $size/1e6}") ($size bytes), built in $(( $(date +%s) - start )) s"
done
