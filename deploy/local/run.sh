#!/usr/bin/env bash
# Set up and run the main job on a fresh Debian/Ubuntu machine with Rust: make sure
# PostgreSQL and RabbitMQ run, then reconcile a 300-user policy end to end against the
# built-in tenant simulator (`policy-reconciler demo`): the job goes through RabbitMQ,
# PostgreSQL and Graph-shaped HTTP calls, and its job.completed is printed.
# Extra arguments go to `policy-reconciler demo` (e.g. --users 2000).
# For a long-running worker instead: cargo run -- run --with-simulator
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/services.sh
exec cargo run --bin policy-reconciler -- demo "$@"
