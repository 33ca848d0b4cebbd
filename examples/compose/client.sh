#!/bin/sh
# The compose example's client: encrypt and decrypt through `hsmstore kms`, as aws-cli would through
# AWS KMS. HSMSTORE_ENDPOINT (default 127.0.0.1:50051) names the server.
set -eu
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'hello from the client container' > "$work/plain"
key_id=$(hsmstore kms describe-key --key-id alias/compose-demo --query KeyMetadata.KeyId --output text)
hsmstore kms encrypt --key-id "$key_id" --plaintext "fileb://$work/plain" --encryption-context app=compose-demo \
  --query CiphertextBlob --output text | base64 -d > "$work/blob"
hsmstore kms decrypt --ciphertext-blob "fileb://$work/blob" --encryption-context app=compose-demo \
  --query Plaintext --output text | base64 -d > "$work/again"
cmp -s "$work/plain" "$work/again"
echo "round trip through $key_id: $(cat "$work/again")"
