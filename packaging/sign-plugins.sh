#!/bin/sh
# Signs the plugins the package ships: copies each one from `make plugins`
# to target/cross/plugins/, writes its manifest (what it needs: hosts, KV,
# memory) beside it and signs that with the project's key,
# SOUNDBOX_PLUGIN_KEY=<secret key file>
# (its public half beside it as <name>.pub). The public key goes to
# target/cross/keys/soundbox-project.pub, which the package installs and its
# config trusts.
#
# Without SOUNDBOX_PLUGIN_KEY a throwaway development key is made in
# target/cross/keys/ and the script says so: such a package is for trying
# the packaging, not for shops (their gateways trust whatever key it holds).
set -eu
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
built=plugins/target/wasm32-wasip2/release
dir=target/cross/plugins
keys=target/cross/keys
mkdir -p "$dir" "$keys"
gateway() { $CARGO run -q --release -p soundbox-gateway -- "$@"; }

key=${SOUNDBOX_PLUGIN_KEY:-}
if [ -z "$key" ]; then
  key=$keys/development.key
  [ -f "$key" ] || gateway plugin keygen "$keys/development" >/dev/null
  echo "WARNING: SOUNDBOX_PLUGIN_KEY is not set: the plugins are signed with a development key ($key), not the project's" >&2
fi
cp "${key%.key}.pub" "$keys/soundbox-project.pub"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# What each shipped plugin needs; a shop's config still has to grant hosts.
sign() {
  plugin=$1
  shift
  cp "$built/$plugin.wasm" "$dir/$plugin.wasm"
  gateway plugin sign "$dir/$plugin.wasm" --key "$key" --version "$version" \
    --publisher "soundbox-gateway project" "$@" >/dev/null
}
sign sepay_webhook
sign sepay_poll --host userapi.sepay.vn --kv
sign casso_webhook
sign momo_ipn
sign zalopay_callback
sign vnpay_ipn
sign generic_webhook
sign demo_bank --kv
sign chain_relay
for plugin in sepay_webhook sepay_poll casso_webhook momo_ipn zalopay_callback vnpay_ipn generic_webhook demo_bank chain_relay; do
  gateway plugin inspect "$dir/$plugin.wasm" --trust "$keys/soundbox-project.pub" >/dev/null
done
echo "signed the shipped plugins with key $(tail -n 1 "$keys/soundbox-project.pub")"
