#!/usr/bin/env bash
# Checks deploy/make-certs.sh: makes a CA, host certificates for the three example hosts, an
# operator's and a client's in a temporary directory, and checks that `openssl verify`
# accepts each against the CA, that each carries the OUs of its roles, its subjectAltName,
# both extended key usages, and a key that matches it; and that bad usage is refused.
# Prints "make-certs: ok" and exits 0, or says what failed and exits 1. Needs openssl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
make="$here/make-certs.sh"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "make-certs: FAILED: $*" >&2; exit 1; }

"$make" -d "$dir" ca test-ca > /dev/null
"$make" -d "$dir" host host1 master,storage,admin DNS:host1.example IP:10.0.0.1 > /dev/null
"$make" -d "$dir" host host2 master,storage DNS:host2.example IP:10.0.0.2 > /dev/null
"$make" -d "$dir" host host3 master,storage IP:10.0.0.3 > /dev/null
"$make" -d "$dir" operator alice > /dev/null
"$make" -d "$dir" client app1 DNS:app1.example > /dev/null

# name: expected OUs, expected SAN text ("" for none)
check() {
    local name=$1 units=$2 san=$3 text unit
    openssl verify -CAfile "$dir/ca.pem" "$dir/$name.pem" > /dev/null 2>&1 \
        || fail "openssl verify refuses $name.pem: $(openssl verify -CAfile "$dir/ca.pem" "$dir/$name.pem" 2>&1)"
    text=$(openssl x509 -in "$dir/$name.pem" -noout -text)
    for unit in $units; do
        grep -q "OU = $unit" <<< "$text" || fail "$name.pem lacks OU $unit"
    done
    [ "$(grep -o 'OU = neo-[a-z]*' <<< "$text" | wc -l)" -eq "$(wc -w <<< "$units")" ] \
        || fail "$name.pem carries other OUs than $units"
    grep -q "TLS Web Server Authentication, TLS Web Client Authentication" <<< "$text" \
        || fail "$name.pem lacks serverAuth and clientAuth"
    grep -q "CA:FALSE" <<< "$text" || fail "$name.pem is not marked CA:FALSE"
    if [ -n "$san" ]; then
        grep -qF "$san" <<< "$text" || fail "$name.pem lacks the subjectAltName $san"
    else
        ! grep -q "Subject Alternative Name" <<< "$text" || fail "$name.pem has a subjectAltName"
    fi
    [ "$(openssl pkey -in "$dir/$name.key" -pubout)" = "$(openssl x509 -in "$dir/$name.pem" -noout -pubkey)" ] \
        || fail "$name.key does not match $name.pem"
    [ "$(stat -c %a "$dir/$name.key")" = 600 ] || fail "$name.key is not mode 600"
}
check host1 "neo-master neo-storage neo-admin" "DNS:host1.example, IP Address:10.0.0.1"
check host2 "neo-master neo-storage" "DNS:host2.example, IP Address:10.0.0.2"
check host3 "neo-master neo-storage" "IP Address:10.0.0.3"
check alice "neo-admin" ""
check app1 "neo-client" "DNS:app1.example"
openssl x509 -in "$dir/ca.pem" -noout -text | grep -q "CA:TRUE" || fail "ca.pem is not a CA"

# A certificate of another CA is refused by this one.
mkdir "$dir/other"
"$make" -d "$dir/other" ca > /dev/null
"$make" -d "$dir/other" host intruder storage > /dev/null
! openssl verify -CAfile "$dir/ca.pem" "$dir/other/intruder.pem" > /dev/null 2>&1 \
    || fail "a foreign CA's certificate verifies"

# Refusals: an existing file, an unknown role, a bad SAN, no CA.
status() { set +e; "$make" "$@" > /dev/null 2>&1; echo $?; set -e; }
[ "$(status -d "$dir" host host1 storage)" = 1 ] || fail "host1 made twice"
[ "$(status -d "$dir" ca)" = 1 ] || fail "a second CA over the first"
[ "$(status -d "$dir" host h4 storage,cook)" = 2 ] || fail "an unknown role accepted"
[ "$(status -d "$dir" host h5 storage 10.0.0.5)" = 2 ] || fail "a SAN without DNS: or IP: accepted"
[ "$(status -d "$dir/none" host h6 storage)" = 1 ] || fail "a certificate made without a CA"
[ "$(status frobnicate)" = 2 ] || fail "an unknown command accepted"
[ ! -e "$dir/h4.pem" ] && [ ! -e "$dir/h5.key" ] || fail "a refused certificate left files"
echo "make-certs: ok"
