#!/bin/sh
# Replica-set members authenticate each other with a shared key file (mode 400, owner mongodb).
# Run by the one-shot `mongo-keyfile` container; keeps an existing key.
set -eu
KEY=/keyfile/mongo.key
if [ ! -s "$KEY" ]; then
  head -c 756 /dev/urandom | base64 | tr -d '\n' > "$KEY"
fi
chown 999:999 "$KEY"
chmod 400 "$KEY"
