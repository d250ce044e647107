#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, trust auth) and RabbitMQ (127.0.0.1:5672, guest/guest)
# run on this Debian/Ubuntu machine: install them when missing, start them when stopped.
# Idempotent; needs root (or sudo) only when it has something to install or start.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

wait_for() { # name, command
  for _ in $(seq 1 60); do
    if eval "$2" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "$1 did not come up" >&2
  return 1
}

postgres_up() { pg_isready -h 127.0.0.1 -p 5432 -q; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "installing PostgreSQL"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! postgres_up; then
  echo "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL postgres_up
fi
# Trust authentication for local TCP connections as user postgres (what the defaults expect).
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  echo "PostgreSQL does not accept user postgres without a password on 127.0.0.1;" >&2
  echo "set RECONCILER__DATABASE__USERNAME / RECONCILER__DATABASE__PASSWORD instead." >&2
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "installing RabbitMQ"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
if ! rabbit_up; then
  echo "starting RabbitMQ"
  $SUDO rabbitmq-server -detached || true
  wait_for RabbitMQ rabbit_up
fi
# The console's browser test drives Debian's headless Chromium through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 && [ ! -x /usr/lib/chromium/chromedriver ]; then
  echo "installing chromium and chromium-driver (the console's browser test)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "chromium-driver could not be installed; the console's browser test will say it skipped" >&2
fi
echo "PostgreSQL and RabbitMQ are up"
