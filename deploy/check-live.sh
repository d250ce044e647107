#!/usr/bin/env bash
# Runs a real Prometheus against a running worker and evaluates every expression of the Grafana
# dashboards and every alert rule through the HTTP API.
#
#   deploy/check-live.sh [--require-series] [HOST:PORT]      (default 127.0.0.1:9090)
#
# HOST:PORT is a worker's http.listen_address (its /metrics). The script starts Prometheus
# (Debian's `prometheus` package) on a free port of 127.0.0.1 with a temporary configuration
# that scrapes the worker every 2 s and loads deploy/prometheus/alerts.yaml, waits for a few
# scrapes, then prints one line per expression with the number of series it returns.
#
# Exit status: 1 if any expression fails to evaluate or any rule's evaluation fails, 2 if
# Prometheus or the target cannot be brought up, 0 otherwise. An expression without series is
# reported as "empty" and passes, unless --require-series is given: many metrics only exist once
# the code has emitted them (a counter after its first increment, the engine's metrics once the
# engine runs), so use --require-series against a worker that has processed jobs, including a
# dead letter, a 429 and a 5xx from the tenant.
set -euo pipefail
cd "$(dirname "$0")/.."

require_series=0
target=127.0.0.1:9090
for arg in "$@"; do
  case $arg in
    --require-series) require_series=1 ;;
    -h | --help)
      sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*)
      echo "unknown option $arg" >&2
      exit 2
      ;;
    *) target=$arg ;;
  esac
done

command -v prometheus >/dev/null 2>&1 || {
  echo "prometheus not found (apt-get install --no-install-recommends prometheus)" >&2
  exit 2
}

workdir=$(mktemp -d)
prometheus_pid=""
cleanup() {
  if [ -n "$prometheus_pid" ] && kill -0 "$prometheus_pid" 2>/dev/null; then
    kill "$prometheus_pid"
    wait "$prometheus_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$workdir/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - $PWD/deploy/prometheus/alerts.yaml
scrape_configs:
  - job_name: policy-reconciler
    static_configs:
      - targets: ["$target"]
EOF

echo "starting Prometheus on 127.0.0.1:$port, scraping $target"
prometheus --config.file="$workdir/prometheus.yml" --storage.tsdb.path="$workdir/data" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn >"$workdir/prometheus.log" 2>&1 &
prometheus_pid=$!

REQUIRE_SERIES=$require_series PROMETHEUS="http://127.0.0.1:$port" TARGET=$target \
  python3 - deploy/grafana <<'PY' || status=$?
import glob
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request

base = os.environ["PROMETHEUS"]
require_series = os.environ["REQUIRE_SERIES"] == "1"
target = os.environ["TARGET"]


def api(path, **params):
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # 400/422: a bad expression
        return json.load(error)


def wait(what, check, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(1)
    sys.exit(f"timed out waiting for {what}")


wait("Prometheus to start", lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 60)


def target_health():
    targets = api("/api/v1/targets")["data"]["activeTargets"]
    return targets[0] if targets else None


wait("the first scrape", lambda: (target_health() or {}).get("health") in ("up", "down"), 30)
health = target_health()
if health["health"] != "up":
    print(f"target {target} is down: {health.get('lastError')}", file=sys.stderr)
    sys.exit(2)


def scraped_samples():
    result = api("/api/v1/query", query='count_over_time(up{job="policy-reconciler"}[1m])')["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


# Enough samples for rate() over a minute, and a few rule evaluations.
wait("four scrapes", lambda: scraped_samples() >= 4, 60)
time.sleep(3)

VARIABLES = {"__rate_interval": "1m", "__interval": "30s", "__range": "5m"}


def substitute(expr):
    # Grafana's $var, ${var} and ${var:format}; a dashboard variable selects every value.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", lambda m: VARIABLES.get(m.group(1) or m.group(2), ".*"), expr)


def panel_exprs(panels):
    for panel in panels:
        yield from panel_exprs(panel.get("panels", []))
        for t in panel.get("targets", []):
            if t.get("expr"):
                yield panel.get("title", "?"), t["expr"]


checks = []  # (source, expression, rule error)
for path in sorted(glob.glob(f"{sys.argv[1]}/**/*.json", recursive=True)):
    dashboard = json.load(open(path))
    if "panels" not in dashboard:
        continue
    name = os.path.basename(path)
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query)
        if m:  # label_values(selector, label): the selector must return series
            checks.append((f"{name} variable {variable['name']}", m.group(1), None))
    for title, expr in panel_exprs(dashboard["panels"]):
        checks.append((f"{name}: {title}", expr, None))

# An alert's expression returns series only while it fires, so its signal (the expression
# without the final comparison with a constant) is what must return series; the whole
# expression must evaluate without error, and how many series fire is reported.
THRESHOLD = re.compile(r"^(.*\S)\s*(?:>=|<=|==|!=|>|<)\s*[-+*/.0-9\s]+$", re.S)
for group in api("/api/v1/rules")["data"]["groups"]:
    for rule in group["rules"]:
        error = rule.get("lastError") if rule.get("health") == "err" else None
        m = THRESHOLD.match(rule["query"])
        checks.append((f"alert {rule['name']}", m.group(1) if m else rule["query"], error))
        if m:
            checks.append((f"alert {rule['name']} (firing)", rule["query"], error))

errors = empties = 0
rows = []
for source, expr, rule_error in checks:
    answer = api("/api/v1/query", query=substitute(expr))
    if answer.get("status") != "success":
        status, count, errors = "ERROR", "-", errors + 1
        detail = answer.get("error", "?")
    elif rule_error:
        status, count, errors = "ERROR", "-", errors + 1
        detail = f"rule evaluation: {rule_error}"
    else:
        count = len(answer["data"]["result"]) if answer["data"]["resultType"] in ("vector", "matrix") else 1
        detail = ""
        if source.endswith("(firing)"):
            status = "firing" if count else "quiet"
        else:
            status = "ok" if count else "empty"
            empties += count == 0
    rows.append((status, str(count), source, " ".join(expr.split()), detail))

width = max(len(r[2]) for r in rows)
print(f"\n{'result':<6} {'series':>6}  {'source':<{width}}  expression")
for status, count, source, expr, detail in rows:
    print(f"{status:<6} {count:>6}  {source:<{width}}  {expr}")
    if detail:
        print(f"{'':<15}{detail}")
checked = sum(1 for r in rows if r[0] not in ("firing", "quiet"))
firing = sum(1 for r in rows if r[0] == "firing")
print(f"\n{checked} expressions: {checked - empties - errors} with series, {empties} empty, {errors} errors; {firing} alerts firing")
if errors:
    sys.exit(1)
if empties and require_series:
    print("--require-series: empty results fail", file=sys.stderr)
    sys.exit(1)
PY
status=${status:-0}
if [ "$status" -ne 0 ] && [ -s "$workdir/prometheus.log" ]; then
  echo "--- prometheus log" >&2
  tail -n 20 "$workdir/prometheus.log" >&2
fi
exit "$status"
