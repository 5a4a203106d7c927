#!/usr/bin/env bash
# Builds the OpenTelemetry Collector peer (main.go, components pinned in go.mod) into
# bench/otelcol/bin/otelcol-peer, from the Go module proxy. The binary is never committed.
# Takes several minutes the first time (the contrib modules and their dependencies).
set -euo pipefail
cd "$(dirname "$0")"
if [[ -x bin/otelcol-peer && bin/otelcol-peer -nt go.sum && bin/otelcol-peer -nt main.go ]]; then
    exit 0
fi
command -v go >/dev/null || { echo "Go is needed to build the Collector peer" >&2; exit 1; }
mkdir -p bin
go build -trimpath -o bin/otelcol-peer .
echo "built $(pwd)/bin/otelcol-peer ($(bin/otelcol-peer --version))"
