#!/usr/bin/env bash
# The main job, locally: creates accounts in a temporary directory, shows their
# identities and certificate chains, has stock OpenSSL check them, moves one
# account to a second device through an encrypted archive and revokes the
# first device. Then three live daemons (alice, bob, carol) on loopback chat
# in a swarm: alice creates it and invites the others over QUIC, they join,
# everyone writes, and each node prints the conversation as it sees it.
#
# Usage: bash scripts/demo.sh [--once]
#   --once   exit after printing (the default when stdin is not a terminal);
#            otherwise the daemons keep running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
once=0
[ "${1:-}" = "--once" ] && once=1
[ -t 0 ] || once=1
bash scripts/install-deps.sh
cargo build --quiet -p starling-node --bin starling
starling="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/starling"

demo="$(mktemp -d -t starling-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$demo"
}
trap cleanup EXIT
export STARLING_PASSWORD="demo password, never do this for real"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Alice and Bob create accounts (each node is a data directory)"
"$starling" --data-dir "$demo/alice-phone" account create --display-name Alice
"$starling" --data-dir "$demo/bob" account create --display-name Bob

for who in alice-phone bob; do
  step "$who: identity and certificate chain"
  "$starling" --data-dir "$demo/$who" account show
  "$starling" --data-dir "$demo/$who" account certs --out "$demo/$who-certs" >/dev/null
  for cert in account device; do
    openssl x509 -in "$demo/$who-certs/$cert.crt.pem" -noout -subject -issuer -serial -enddate \
      | sed "s/^/  $cert: /"
  done
  openssl verify -CAfile "$demo/$who-certs/account.crt.pem" "$demo/$who-certs/device.crt.pem"
done

step "Alice moves to a laptop through an encrypted archive (argon2id + XChaCha20-Poly1305)"
"$starling" --data-dir "$demo/alice-phone" account export --out "$demo/alice.starling"
"$starling" --data-dir "$demo/alice-laptop" account import "$demo/alice.starling"

step "The phone is lost: the laptop revokes it"
phone=$("$starling" --data-dir "$demo/alice-phone" --json account show | python3 -c 'import json,sys; print(json.load(sys.stdin)["device_id"])')
"$starling" --data-dir "$demo/alice-laptop" device revoke "$phone"
"$starling" --data-dir "$demo/alice-laptop" account show
"$starling" --data-dir "$demo/alice-laptop" account certs --out "$demo/laptop-certs" >/dev/null

step "Stock OpenSSL agrees: the phone is revoked, the laptop is not"
openssl verify -crl_check -CRLfile "$demo/laptop-certs/crl.pem" -CAfile "$demo/laptop-certs/account.crt.pem" \
  "$demo/laptop-certs/device.crt.pem"
if openssl verify -crl_check -CRLfile "$demo/laptop-certs/crl.pem" -CAfile "$demo/laptop-certs/account.crt.pem" \
  "$demo/alice-phone-certs/device.crt.pem" 2>&1; then
  echo "unexpected: the revoked phone still verifies" >&2; exit 1
fi

# ---- live nodes ----
st() { "$starling" --data-dir "$demo/$1" "${@:2}"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
# Polls "$@" until it succeeds, for at most 30 seconds.
wait_until() {
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for: $*" >&2; exit 1
}

step "Three live daemons on loopback: alice, bob, carol"
for who in alice bob carol; do
  [ -d "$demo/$who" ] || st "$who" account create --display-name "$who" >/dev/null
  "$starling" --data-dir "$demo/$who" up --api 127.0.0.1:0 --listen 127.0.0.1:0 \
    >/dev/null 2>"$demo/$who.log" &
  pids+=($!)
done
for who in alice bob carol; do
  wait_until test -f "$demo/$who/run.json"
  wait_until st "$who" status
done
declare -A account listen
for who in alice bob carol; do
  account[$who]=$(st "$who" --json status | field account_id)
  listen[$who]=$(st "$who" --json status | field listen)
  echo "  $who: API $(st "$who" --json status | field api), QUIC ${listen[$who]}"
done
for who in alice bob carol; do
  for other in alice bob carol; do
    [ "$who" = "$other" ] || st "$who" peer add "${account[$other]}@${listen[$other]}" >/dev/null
  done
done

step "Alice creates a swarm and invites Bob and Carol; they join over QUIC"
conv=$(st alice --json swarm create --title "Flock" | field id)
echo "  conversation $conv"
st alice swarm invite "$conv" "${account[bob]}"
st alice swarm invite "$conv" "${account[carol]}"
invited() { st "$1" --json swarm invites | grep -q "$conv"; }
for who in bob carol; do
  wait_until invited "$who"
  st "$who" swarm join "$conv"
done

step "Everyone writes"
st alice send "$conv" "Hello, flock!" >/dev/null
st bob send "$conv" "Hi Alice: this message is a signed Git commit." >/dev/null
st carol send "$conv" "And it reached you over QUIC, peer to peer." >/dev/null
count() { [ "$(st "$1" --json messages "$conv" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 3 ]; }
for who in alice bob carol; do wait_until count "$who"; done

for who in alice bob carol; do
  step "The conversation as $who sees it"
  st "$who" messages "$conv"
  st "$who" swarm members "$conv"
done

if [ "$once" = 1 ]; then
  echo
  echo "demo done (data was in $demo, now removed)"
else
  echo
  echo "The daemons keep running (APIs above; data in $demo). Ctrl-C stops them."
  wait
fi
