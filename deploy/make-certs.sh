#!/usr/bin/env bash
# Makes a neo-rs cluster's certificate authority and the certificates it signs, with the
# openssl command line. Every neo process is given the CA, its certificate and its key
# (`ca`, `cert`, `key` in neo.toml); the roles a certificate lets its holder play are its
# subject's organizational units: neo-master, neo-storage, neo-admin, neo-client.
#
#   make-certs.sh [-d DIR] [-y DAYS] ca [NAME]
#       DIR/ca.pem and DIR/ca.key: the cluster's CA (once; refused if it exists). Keep
#       ca.key off the nodes: only ca.pem is copied to them.
#   make-certs.sh [-d DIR] [-y DAYS] host NAME ROLES [SAN...]
#       DIR/NAME.pem and DIR/NAME.key for a host running the roles in ROLES (comma-separated:
#       master, storage, admin, client), e.g. `host host1 master,storage,admin
#       DNS:host1.example.com IP:10.0.0.1`.
#   make-certs.sh [-d DIR] [-y DAYS] operator NAME [SAN...]
#       an operator's certificate for `neo ctl` (role neo-admin).
#   make-certs.sh [-d DIR] [-y DAYS] client NAME [SAN...]
#       an application host's certificate (role neo-client: ZODB clients, `neo pack`).
#
# SAN: DNS:NAME or IP:ADDRESS, put in the subjectAltName (neo checks the CA and the roles,
# not the names, but other tools may). Keys are ECDSA P-256 (PKCS#8 PEM, mode 600); every
# certificate may serve and connect (serverAuth and clientAuth: nodes are both). DIR
# defaults to the current directory, DAYS to 825 (3650 for the CA).
#
# Exit status: 0 made, 1 openssl failed or a file exists already, 2 bad usage.
set -euo pipefail

usage() {
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

dir=.
days=
while getopts "d:y:h" option; do
    case $option in
        d) dir=$OPTARG ;;
        y) days=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
command -v openssl > /dev/null || { echo "make-certs.sh: openssl is not installed" >&2; exit 1; }
mkdir -p "$dir"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The OU of a role name.
role_unit() {
    case $1 in
        master | storage | admin | client) echo "neo-$1" ;;
        neo-master | neo-storage | neo-admin | neo-client) echo "$1" ;;
        *) echo "make-certs.sh: unknown role '$1' (master, storage, admin, client)" >&2; exit 2 ;;
    esac
}

# subjectAltName value of SAN arguments (DNS:x, IP:y).
alt_names() {
    local out="" san
    for san in "$@"; do
        case $san in
            DNS:?* | IP:?*) out="${out:+$out,}$san" ;;
            *) echo "make-certs.sh: '$san' is not DNS:NAME or IP:ADDRESS" >&2; exit 2 ;;
        esac
    done
    echo "$out"
}

refuse_existing() {
    local file
    for file in "$@"; do
        if [ -e "$file" ]; then
            echo "make-certs.sh: $file exists; remove it first to make a new one" >&2
            exit 1
        fi
    done
}

new_key() {
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1")
}

make_ca() {
    local name=${1:-neo-ca}
    refuse_existing "$dir/ca.pem" "$dir/ca.key"
    new_key "$dir/ca.key"
    openssl req -new -x509 -sha256 -days "${days:-3650}" -key "$dir/ca.key" \
        -subj "/O=neo/CN=$name" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$dir/ca.pem"
    echo "made $dir/ca.pem and $dir/ca.key (keep ca.key off the nodes)"
}

# issue NAME UNITS(space-separated OUs) SAN...
issue() {
    local name=$1 units=$2
    shift 2
    case $name in
        '' | */* | .*) echo "make-certs.sh: '$name' is not a file name" >&2; exit 2 ;;
    esac
    [ -e "$dir/ca.pem" ] && [ -e "$dir/ca.key" ] \
        || { echo "make-certs.sh: no CA in $dir: run 'make-certs.sh -d $dir ca' first" >&2; exit 1; }
    refuse_existing "$dir/$name.pem" "$dir/$name.key"
    local subject="/O=neo" unit sans
    for unit in $units; do subject="$subject/OU=$unit"; done
    subject="$subject/CN=$name"
    sans=$(alt_names "$@")
    local extensions=$scratch/$name.ext csr=$scratch/$name.csr
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyAgreement"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        echo "subjectKeyIdentifier=hash"
        echo "authorityKeyIdentifier=keyid"
        [ -n "$sans" ] && echo "subjectAltName=$sans"
    } > "$extensions"
    new_key "$dir/$name.key"
    openssl req -new -sha256 -key "$dir/$name.key" -subj "$subject" -out "$csr"
    openssl x509 -req -sha256 -days "${days:-825}" -in "$csr" \
        -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -CAserial "$dir/ca.srl" \
        -extfile "$extensions" -out "$dir/$name.pem" 2> /dev/null
    echo "made $dir/$name.pem and $dir/$name.key: $subject${sans:+, $sans}"
}

command=$1
shift
case $command in
    ca) make_ca "$@" ;;
    host)
        [ $# -ge 2 ] || usage
        name=$1 roles=$2
        shift 2
        units=""
        IFS=, read -r -a role_list <<< "$roles"
        [ ${#role_list[@]} -ge 1 ] || usage
        for role in "${role_list[@]}"; do units="$units $(role_unit "$role")"; done
        issue "$name" "$units" "$@"
        ;;
    operator)
        [ $# -ge 1 ] || usage
        name=$1
        shift
        issue "$name" "neo-admin" "$@"
        ;;
    client)
        [ $# -ge 1 ] || usage
        name=$1
        shift
        issue "$name" "neo-client" "$@"
        ;;
    *) usage ;;
esac
