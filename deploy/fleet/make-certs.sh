#!/bin/sh
# A private CA for a chain's MQTT cluster, and certificates signed by it.
#
#   make-certs.sh DIR ca                          the CA: DIR/chain-ca.pem (+ .key: keep it offline)
#   make-certs.sh DIR server NAME [NAME|IP]...    a broker's certificate, for every name clients dial
#   make-certs.sh DIR client ID [ID]...           one certificate per gateway (CN = its gateway.id)
#
# A client certificate's CN is the identity every broker config here keys on:
# Mosquitto's use_identity_as_username takes it as the username, NATS's
# verify_and_map looks the subject up as the user "CN=<ID>". Keys are ECDSA
# P-256 (PKCS#8 PEM); certificates last 825 days.
set -eu

usage() {
  sed -n '2,6p' "$0" >&2
  exit 2
}
[ $# -ge 2 ] || usage
dir=$1
what=$2
shift 2
mkdir -p "$dir"
cd "$dir"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

sign() { # name ext-file
  openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA chain-ca.pem -CAkey chain-ca.key -CAcreateserial \
    -days 825 -sha256 -extfile "$2" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$2"
  chmod 644 "$1.crt"
  echo "$dir/$1.crt ($(openssl x509 -noout -subject -in "$1.crt"))"
}

case $what in
  ca)
    [ ! -e chain-ca.key ] || { echo "$dir/chain-ca.key exists; not replacing the CA" >&2; exit 1; }
    key chain-ca.key
    openssl req -x509 -new -key chain-ca.key -subj "/CN=Chain MQTT CA" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -out chain-ca.pem
    chmod 644 chain-ca.pem
    echo "$dir/chain-ca.pem"
    ;;
  server)
    [ $# -ge 1 ] || usage
    name=$1
    san=""
    for n in "$@"; do
      case $n in
        *[!0-9.]*) san="$san${san:+,}DNS:$n" ;;
        *) san="$san${san:+,}IP:$n" ;;
      esac
    done
    key "$name.key"
    ext=$(mktemp)
    # clientAuth too: NATS nodes present the same kind of certificate on their cluster routes.
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$san" >"$ext"
    sign "$name" "$ext"
    ;;
  client)
    [ $# -ge 1 ] || usage
    for id in "$@"; do
      case $id in
        *[!A-Za-z0-9_-]* | "") echo "$id: a gateway id is letters, digits, - and _" >&2; exit 1 ;;
      esac
      key "$id.key"
      ext=$(mktemp)
      # NATS refuses a client certificate without the clientAuth extended key usage.
      printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$ext"
      sign "$id" "$ext"
    done
    ;;
  *) usage ;;
esac
