#!/bin/sh
# The swarm's own small certificate authority (docs/several-hosts.md, "Traffic between hosts"), run
# on the manager by a swarm deploy (tasks/commands/swarm_tls.py). Postgres and NATS get a server
# certificate for the service name their clients use; the clients trust only this CA.
#   tls-ca.sh DIR check NAME...   changes nothing: prints "NAME FINGERPRINT" for the CA and each
#                                 server certificate, "NAME renew" for one that is missing or
#                                 expires within 30 days
#   tls-ca.sh DIR ensure NAME...  makes the CA if missing (10 years), issues every certificate
#                                 `check` would renew (397 days), then prints as `check`
#   tls-ca.sh DIR rotate NAME...  issues every server certificate anew (the CA stays)
# DIR is 0700, the keys 0600 (EC P-256); a certificate and its key are replaced together.
set -eu
dir=$1
mode=$2
shift 2
case $mode in
  check | ensure | rotate) ;;
  *) echo "tls-ca.sh: unknown mode $mode" >&2 && exit 2 ;;
esac
renew_seconds=$((30 * 86400))
umask 077

expiring() { # NAME: missing, or expires within renew_seconds
  [ ! -s "$dir/$1.pem" ] || [ ! -s "$dir/$1.key" ] ||
    ! openssl x509 -checkend "$renew_seconds" -noout -in "$dir/$1.pem" >/dev/null 2>&1
}

issue() { # NAME: a key and a server certificate for the DNS name NAME, signed by the CA
  printf '%s\n' "subjectAltName=DNS:$1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$dir/$1.ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$dir/$1.key.new" -out "$dir/$1.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 397 -sha256 -extfile "$dir/$1.ext" -out "$dir/$1.pem.new" 2>/dev/null
  mv -f "$dir/$1.key.new" "$dir/$1.key"
  mv -f "$dir/$1.pem.new" "$dir/$1.pem"
  rm -f "$dir/$1.csr" "$dir/$1.ext"
}

if [ "$mode" != check ]; then
  install -d -m 700 "$dir"
  if [ ! -s "$dir/ca.key" ] || [ ! -s "$dir/ca.pem" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=tasktracker swarm CA" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    for name in "$@"; do rm -f "$dir/$name.pem"; done # a new CA: its certificates anew
  fi
  chmod 644 "$dir/ca.pem"
  for name in "$@"; do
    if [ "$mode" = rotate ] || expiring "$name"; then issue "$name"; fi
  done
fi

fingerprint() {
  openssl x509 -noout -fingerprint -sha256 -in "$1" | cut -d= -f2 | tr -d : | cut -c1-12 |
    tr 'A-F' 'a-f'
}
if [ -s "$dir/ca.pem" ]; then echo "ca $(fingerprint "$dir/ca.pem")"; else echo "ca renew"; fi
for name in "$@"; do
  if expiring "$name"; then
    echo "$name renew"
  else
    echo "$name $(fingerprint "$dir/$name.pem")"
  fi
done
