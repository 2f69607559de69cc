#!/bin/sh
# Probes a chain's broker with real certificates: what each identity may
# read and write, and whether a shop's persistent session keeps a payment
# published while the shop was away. Run it against a new cluster (or a
# staging copy) before any shop relies on it. It publishes test messages on
# the two shops' topics: use test shop ids, not live ones, or stop those
# shops' gateways first (a payment published here would be announced).
#
#   check-acls.sh HOST PORT CERTDIR SHOP OTHER_SHOP
#
# CERTDIR holds chain-ca.pem and <id>.crt/<id>.key for SHOP, OTHER_SHOP,
# relay and headoffice (make-certs.sh makes them). Needs mosquitto_pub and
# mosquitto_sub (Debian: mosquitto-clients). Exit status 0 when every check
# passed.
set -u
[ $# -eq 5 ] || { sed -n '8p' "$0" >&2; exit 2; }
host=$1 port=$2 certs=$3 shop=$4 other=$5
pass=0 fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

as() { # identity: the connection options for it
  echo "-h $host -p $port -V mqttv311 --cafile $certs/chain-ca.pem --cert $certs/$1.crt --key $certs/$1.key"
}

# sub ID TOPIC [extra mosquitto_sub options]: subscribe in the background for
# 3 s; what arrives goes to $tmp/got.
sub() {
  id=$1 topic=$2
  shift 2
  # shellcheck disable=SC2046
  mosquitto_sub $(as "$id") -q 1 -t "$topic" -v -W 3 "$@" >"$tmp/got" 2>"$tmp/sub.err" &
  sub_pid=$!
  sleep 1
}

pub() { # ID TOPIC MESSAGE [extra options]
  id=$1 topic=$2 msg=$3
  shift 3
  # shellcheck disable=SC2046
  mosquitto_pub $(as "$id") -q 1 -t "$topic" -m "$msg" "$@" 2>>"$tmp/pub.err"
}

received() { wait "$sub_pid" 2>/dev/null; grep -qF "$1" "$tmp/got"; }

check() { # description, then a command that succeeds when the check passed
  what=$1
  shift
  if "$@"; then
    pass=$((pass + 1))
    echo "ok    $what"
  else
    fail=$((fail + 1))
    echo "FAIL  $what"
  fi
}

not() { ! "$@"; }

nonce=$(date +%s)-$$

# One connection first: NATS creates its MQTT streams on the first CONNECT,
# which can take longer than the checks wait.
# shellcheck disable=SC2046
mosquitto_sub $(as "$shop") -q 1 -t "chain/$shop/payments" -W 2 >/dev/null 2>&1

sub "$shop" "chain/$shop/payments"
pub relay "chain/$shop/payments" "own-$nonce"
check "$shop reads chain/$shop/payments, written by the relay" received "own-$nonce"

sub "$shop" "chain/$other/payments"
pub relay "chain/$other/payments" "other-$nonce"
check "$shop does not read chain/$other/payments" not received "other-$nonce"

sub "$shop" "chain/#"
pub relay "chain/$other/payments" "wild-$nonce"
check "$shop subscribed to chain/# still gets nothing of $other" not received "wild-$nonce"

sub "$other" "chain/$other/payments"
pub "$shop" "chain/$other/payments" "forged-$nonce"
check "$shop cannot write chain/$other/payments" not received "forged-$nonce"

sub headoffice "chain/$shop/payments"
pub relay "chain/$shop/payments" "peek-$nonce"
check "headoffice does not read payments" not received "peek-$nonce"

pub "$shop" "chain/$shop/health" "{\"check\":\"$nonce\"}" -r
sub headoffice "chain/+/health"
check "$shop writes its retained health; headoffice reads it" received "$nonce"

pub relay "chain/$shop/health" "relay-health-$nonce" -r
sub headoffice "chain/$shop/health"
check "the relay cannot write chain/$shop/health" not received "relay-health-$nonce"

pub relay "chain/relay/status" "online-$nonce" -r
sub headoffice "chain/+/status"
check "the relay writes chain/relay/status; headoffice reads it" received "online-$nonce"

sub "$shop" "chain/$shop/payments"
pub headoffice "chain/$shop/payments" "ho-$nonce"
check "headoffice cannot write payments" not received "ho-$nonce"

# Not counted: the brokers' samples differ here (docs/fleet.md).
sub "$shop" "chain/$shop/payments"
pub "$shop" "chain/$shop/payments" "self-$nonce"
if received "self-$nonce"; then
  echo "note  $shop can write its own chain/$shop/payments"
else
  echo "note  $shop cannot write its own chain/$shop/payments"
fi

# A persistent session: subscribe once, go away, come back.
session="check-acls-$shop-$nonce"
sub "$shop" "chain/$shop/payments" -c -i "$session"
wait "$sub_pid" 2>/dev/null
pub relay "chain/$shop/payments" "while-away-$nonce"
sleep 1
sub "$shop" "chain/$shop/payments" -c -i "$session"
check "a payment published while $shop was away arrives when it is back" received "while-away-$nonce"
# End the test session (a clean session of the same id removes it).
# shellcheck disable=SC2046
mosquitto_sub $(as "$shop") -i "$session" -t "chain/$shop/payments" -W 1 >/dev/null 2>&1

# Tidy the retained test messages (an empty retained message clears).
# shellcheck disable=SC2046
mosquitto_pub $(as "$shop") -q 1 -r -n -t "chain/$shop/health" 2>/dev/null
# shellcheck disable=SC2046
mosquitto_pub $(as relay) -q 1 -r -n -t chain/relay/status 2>/dev/null

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
