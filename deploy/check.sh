#!/usr/bin/env bash
# Static checks of the deployment artifacts; needs no running service.
#
#   deploy/check.sh
#
# - promtool: the alert rules, their unit tests and the compose Prometheus configuration
# - docker compose (or Debian's docker-compose): deploy/compose.yaml
# - kubectl kustomize (or kustomize build): the Kubernetes base renders
# - python3: the Grafana dashboards, the provisioning and the RabbitMQ definitions parse
#
# Tools on Debian 12: `apt-get install --no-install-recommends prometheus docker-compose` (the
# prometheus package brings promtool), and a kubectl of 1.21 or later or a standalone kustomize
# (Debian's kubernetes-client 1.20 embeds a kustomize too old for `configMapGenerator.envs`).
# A missing tool fails its check, except the compose client: without one that check is skipped
# with a message. The metric names are checked by `cargo test` (the deploy:: tests).
set -uo pipefail
cd "$(dirname "$0")/.."

failed=0
results=()
run() { # name, command...
  local name=$1
  shift
  echo "== $name: $*"
  if "$@"; then
    results+=("PASS  $name")
  else
    results+=("FAIL  $name")
    failed=1
  fi
}
skip() { # name, reason
  echo "== $1: skipped: $2"
  results+=("SKIP  $1 ($2)")
}
missing() { # name, tool hint
  echo "== $1: $2" >&2
  results+=("FAIL  $1 ($2)")
  failed=1
}

if command -v promtool >/dev/null 2>&1; then
  run "alert rules" promtool check rules deploy/prometheus/alerts.yaml
  run "alert rule unit tests" promtool test rules deploy/prometheus/alerts.test.yaml
  run "prometheus config" promtool check config deploy/prometheus/prometheus.yml
else
  missing "alert rules" "promtool not found (apt-get install --no-install-recommends prometheus)"
fi

if docker compose version >/dev/null 2>&1; then
  run "compose file" docker compose -f deploy/compose.yaml config -q
elif command -v docker-compose >/dev/null 2>&1; then
  run "compose file" docker-compose -f deploy/compose.yaml config -q
else
  skip "compose file" "no docker compose plugin or docker-compose (apt-get install docker-compose)"
fi

render_k8s() { "$@" deploy/k8s >/dev/null; }
render_k8s_overlay() { "$@" deploy/k8s-overlay-example >/dev/null; }
if command -v kubectl >/dev/null 2>&1; then
  run "kubernetes base" render_k8s kubectl kustomize
  run "kubernetes overlay example" render_k8s_overlay kubectl kustomize
elif command -v kustomize >/dev/null 2>&1; then
  run "kubernetes base" render_k8s kustomize build
  run "kubernetes overlay example" render_k8s_overlay kustomize build
else
  missing "kubernetes base" "neither kubectl (1.21+) nor kustomize found"
fi

parse_json() {
  local file ok=0
  for file in "$@"; do
    python3 -m json.tool "$file" >/dev/null || { echo "not valid JSON: $file" >&2; ok=1; }
  done
  return $ok
}
mapfile -t json_files < <(find deploy/grafana deploy/rabbitmq -name '*.json' | sort)
run "json (${#json_files[@]} files)" parse_json "${json_files[@]}"

echo
printf '%s\n' "${results[@]}"
exit $failed
