# Shared by the packaging scripts (sourced, not run). Installs missing tools
# the way the Makefile's `test-tools` target does: Debian packages with sudo
# unless root, Rust targets with rustup, cargo-deb with `cargo install`.

# The Debian cross toolchain of a Rust target: "<gcc prefix> <libc dev package> <qemu>".
cross_toolchain() {
  case "$1" in
    aarch64-unknown-linux-gnu) echo "aarch64-linux-gnu libc6-dev-arm64-cross qemu-aarch64-static" ;;
    armv7-unknown-linux-gnueabihf) echo "arm-linux-gnueabihf libc6-dev-armhf-cross qemu-arm-static" ;;
    x86_64-unknown-linux-gnu) echo "- - -" ;;
    *) echo "unsupported target: $1 (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf, x86_64-unknown-linux-gnu)" >&2; return 1 ;;
  esac
}

# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
  missing=""
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
  done
  [ -z "$missing" ] && return 0
  echo "installing$missing"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing
}

rust_target() {
  rustup target list --installed 2>/dev/null | grep -qx "$1" || rustup target add "$1"
}

# Exports the linker, C compiler and archiver cargo and the cc crate (ring)
# use for TARGET, so no .cargo/config.toml is needed.
cross_env() {
  set -- "$1" $(cross_toolchain "$1")
  [ "$2" = - ] && return 0
  upper=$(echo "$1" | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${upper}_LINKER=$2-gcc"
  export "CC_$(echo "$1" | tr '-' '_')=$2-gcc"
  export "AR_$(echo "$1" | tr '-' '_')=$2-ar"
}

# Installs the cross gcc and libc of TARGET (and qemu when WITH_QEMU=1).
cross_tools() {
  set -- "$1" $(cross_toolchain "$1")
  rust_target "$1"
  [ "$2" = - ] && return 0
  pkgs="gcc-$2 $3"
  [ "${WITH_QEMU:-0}" = 1 ] && pkgs="$pkgs qemu-user-static"
  apt_install $pkgs
}
