#!/usr/bin/env bash
# Gives a real worker the traffic that makes every dashboard and alert series exist, then runs
# deploy/check-live.sh --require-series against it, and cleans up.
#
#   deploy/check-live-traffic.sh
#
# The worker runs against the local PostgreSQL and RabbitMQ (database and queue names of its
# own) and the built-in simulator, which answers 5 % of calls with a server error and allows
# 5 writes a second against the worker's budget of 60, so that 5xx answers, 429s and the
# adaptive write rate appear (at 40 a second the worker, whose writes the policy's reads and
# read-backs pace, never met a 429). It is given a 502-member policy (one user without a usage location, one unknown), an
# invalid job, a members_added for a policy that never arrives, and a body that is not JSON
# (a dead letter). Needs the prometheus package (deploy/check-live.sh says so if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

id="livecheck$$"
work=$(mktemp -d)
port_http=$((20000 + RANDOM % 10000))
port_sim=$((port_http + 1))
worker_pid=""

cleanup() {
  if [ -n "$worker_pid" ]; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS pr_$id WITH (FORCE)" >/dev/null 2>&1 || true
  for q in "$id.jobs" "$id.jobs.dead"; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
  for x in "$id.jobs" "$id.dlx" "$id.events"; do
    rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"cleanup\">>)." >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# The tenant's users and the jobs, as files.
{
  printf '{"users":['
  for i in $(seq 0 499); do printf '{"userPrincipalName":"live%d@nhs.net","usageLocation":"GB"},' "$i"; done
  printf '{"userPrincipalName":"nolocation@nhs.net"}]}'
} > "$work/seed.json"
members=$( { for i in $(seq 0 499); do printf '"live%d@nhs.net",' "$i"; done; printf '"nolocation@nhs.net","ghost@nhs.net"'; } )
envelope() { # type, payload
  printf '{"message_id":"%s","type":"%s","schema_version":1,"sent_at":"2026-11-22T22:00:00Z","ticket":{"reference":"INC-LIVE","originator":"ops@nhs.net"},"actor":{"email":"ops@nhs.net","ods_code":"RX1"},"payload":%s}' \
    "$(cat /proc/sys/kernel/random/uuid)" "$1" "$2"
}
policy='{"id":"live-pol","name":"Live","ods_code":"RX1","version":1,"licence":"ENTERPRISEPACK","toggles":{"TEAMS1":true}}'
envelope policy.changed "{\"policy\":$policy,\"members\":[$members],\"total_members\":502}" > "$work/changed.json"
envelope policy.changed '{"policy":{"id":"live-bad","name":"Bad","ods_code":"RX1","version":1,"licence":"NOSUCHSKU","toggles":{}},"members":["a@nhs.net"],"total_members":1}' > "$work/invalid.json"
envelope policy.members_added '{"policy_id":"never","members":["a@nhs.net"],"total_members":1}' > "$work/unknown.json"
printf 'this is not json' > "$work/bad.txt"

export RECONCILER__HTTP__LISTEN_ADDRESS="127.0.0.1:$port_http"
export RECONCILER__DATABASE__DATABASE_NAME="pr_$id"
export RECONCILER__BROKER__TOPOLOGY__JOBS_EXCHANGE="$id.jobs"
export RECONCILER__BROKER__TOPOLOGY__JOBS_QUEUE="$id.jobs"
export RECONCILER__BROKER__TOPOLOGY__DEAD_LETTER_EXCHANGE="$id.dlx"
export RECONCILER__BROKER__TOPOLOGY__DEAD_LETTER_QUEUE="$id.jobs.dead"
export RECONCILER__BROKER__TOPOLOGY__EVENTS_EXCHANGE="$id.events"
export RECONCILER__SIMULATOR__LISTEN_ADDRESS="127.0.0.1:$port_sim"
export RECONCILER__SIMULATOR__SEED_FILE="$work/seed.json"
export RECONCILER__SIMULATOR__FAULT_RATE=0.05
export RECONCILER__SIMULATOR__WRITES_PER_WINDOW=5
export RECONCILER__SIMULATOR__WRITE_WINDOW_SECONDS=1
export RECONCILER__TENANT__WRITES_PER_SECOND=60
export RECONCILER__ENGINE__UNKNOWN_POLICY_WAIT_SECONDS=1
export RECONCILER__LOG__FORMAT=json
export RECONCILER__LOG__LEVEL=warn

cargo build --quiet --bin policy-reconciler
bin="${CARGO_TARGET_DIR:-target}/debug/policy-reconciler"
"$bin" run --with-simulator > "$work/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port_http/readyz" >/dev/null && break
  sleep 0.5
done
for f in changed.json invalid.json unknown.json; do "$bin" publish "$work/$f"; done
"$bin" publish "$work/bad.txt" --routing-key policy.changed
# Let the policy run under the throttle for a while (it needs not finish).
sleep 30
bash deploy/check-live.sh --require-series "127.0.0.1:$port_http"
