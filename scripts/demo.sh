#!/usr/bin/env bash
# The main job, locally: creates accounts in a temporary directory, shows their
# identities and certificate chains, has stock OpenSSL check them, moves one
# account to a second device through an encrypted archive and revokes the
# first device. Later issues turn this into live nodes chatting in a swarm.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --quiet -p starling-node --bin starling
starling="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/starling"

demo="$(mktemp -d -t starling-demo.XXXXXX)"
trap 'rm -rf "$demo"' EXIT
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
echo
echo "demo done (data was in $demo, now removed)"
