#!/usr/bin/env bash
# Set up and run on a fresh Debian/Ubuntu machine with Rust: make sure PostgreSQL and RabbitMQ
# run, then start a worker against the built-in tenant simulator. Ctrl-C stops it cleanly.
# Extra arguments go to `policy-reconciler run`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/services.sh
exec cargo run --bin policy-reconciler -- run --with-simulator "$@"
