#!/usr/bin/env bash
# DPoP proofs (RFC 9449) with openssl alone, for trying the filter with curl:
#
#   envoy/dpop/proof.sh key dpop.key                 # a new P-256 key
#   envoy/dpop/proof.sh jkt dpop.key                 # its RFC 7638 thumbprint (the token's cnf.jkt)
#   envoy/dpop/proof.sh proof dpop.key POST https://idp.example/token
#   envoy/dpop/proof.sh proof dpop.key GET https://api.example/orders "$TOKEN" [NONCE]
#
# A proof is good for one request: its jti is random, its iat is now.
set -euo pipefail

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
hex_to_b64url() { printf '%s' "$1" | sed 's/../\\x&/g' | xargs -0 printf '%b' | b64url; }

# The key's public point: the last 64 bytes of its DER SubjectPublicKeyInfo, as hex.
point() { openssl ec -in "$1" -pubout -outform DER 2>/dev/null | tail -c 64 | od -An -v -tx1 | tr -d ' \n'; }

jwk() {
  local p; p=$(point "$1")
  printf '{"crv":"P-256","kty":"EC","x":"%s","y":"%s"}' "$(hex_to_b64url "${p:0:64}")" "$(hex_to_b64url "${p:64:64}")"
}

# An ECDSA signature's r or s (hex from asn1parse) as exactly 32 bytes of hex.
fixed() { local v=${1#00}; while [ ${#v} -lt 64 ]; do v="0$v"; done; printf '%s' "$v"; }

proof() {
  local key=$1 method=$2 url=$3 token=${4:-} nonce=${5:-} extra=""
  [ -n "$token" ] && extra="$extra,\"ath\":\"$(printf '%s' "$token" | openssl dgst -sha256 -binary | b64url)\""
  [ -n "$nonce" ] && extra="$extra,\"nonce\":\"$nonce\""
  local header payload der r s
  header=$(printf '{"typ":"dpop+jwt","alg":"ES256","jwk":%s}' "$(jwk "$key")" | b64url)
  payload=$(printf '{"jti":"%s","htm":"%s","htu":"%s","iat":%s%s}' \
    "$(openssl rand -hex 16)" "$method" "$url" "$(date +%s)" "$extra" | b64url)
  der=$(printf '%s' "$header.$payload" | openssl dgst -sha256 -sign "$key" | openssl asn1parse -inform DER)
  r=$(printf '%s\n' "$der" | awk -F: '/INTEGER/ {print $NF}' | sed -n 1p)
  s=$(printf '%s\n' "$der" | awk -F: '/INTEGER/ {print $NF}' | sed -n 2p)
  printf '%s.%s.%s\n' "$header" "$payload" "$(hex_to_b64url "$(fixed "$r")$(fixed "$s")")"
}

case "${1:-}" in
  key) openssl ecparam -name prime256v1 -genkey -noout -out "$2" ;;
  jkt) printf '%s' "$(jwk "$2")" | openssl dgst -sha256 -binary | b64url; echo ;;
  proof) shift; proof "$@" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
