#!/usr/bin/env bash
# Builds helm-render offline from Debian's Go packages (golang-go,
# golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v2-dev): no module download, no
# checksum database, go.mod left as it is.
# Usage: build.sh OUTPUT
set -euo pipefail
out=$(realpath -m "${1:?usage: build.sh OUTPUT}")
cd "$(dirname "$0")"
export GOFLAGS=-mod=readonly GOPROXY=off GOSUMDB=off GONOSUMDB='*' GOWORK=off GO111MODULE=on
exec go build -buildvcs=false -trimpath -overlay overlay.json -o "$out" .
