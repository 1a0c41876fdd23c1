#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and headless Chromium are ready for the
# tests. Idempotent: does nothing when both answer. Starts them from installed binaries,
# or installs them with apt-get on a fresh Debian/Ubuntu machine. Prints TEST_PG_URL.
set -euo pipefail
# Only the URL goes to stdout (callers capture it); everything else, including what
# pg_ctlcluster or apt print, goes to stderr.
exec 3>&1 1>&2

log() { echo "provision: $*" >&2; }
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "cannot install $*: no apt-get; install it yourself"; exit 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then $SUDO apt-get update -qq >&2; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" 3>&-
}

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! command -v pg_isready >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  log "installing postgresql"; apt_install postgresql postgresql-client
fi
if ! pg_up; then
  log "starting postgresql"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    ver=$(ls /etc/postgresql | sort -n | tail -1)
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start 3>&- || true
  fi
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || { log "postgresql did not come up on 127.0.0.1:5432"; exit 1; }
fi

# Trust auth on this machine; a fresh apt install wants a password on TCP: set one.
url="postgres://postgres@127.0.0.1:5432"
if ! psql "$url/postgres" -qAtc 'select 1' >/dev/null 2>&1; then
  log "setting a password for the postgres role (fresh install uses password auth on TCP)"
  $SUDO runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >&2 \
    || su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
  url="postgres://postgres:postgres@127.0.0.1:5432"
  psql "$url/postgres" -qAtc 'select 1' >/dev/null
fi

if ! command -v redis-server >/dev/null; then
  log "installing redis"; apt_install redis-server
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no 3>&-
  for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.25; done
fi

# nftables for the partition tests (tests/partitions.rs cuts links with it inside
# network namespaces; they need root, as CI has).
if [ "$(id -u)" = 0 ] && ! command -v nft >/dev/null; then
  log "installing nftables (partition tests)"; apt_install nftables
fi

# Headless Chromium and chromedriver for the web UI test (Debian's packages).
if ! command -v chromedriver >/dev/null || ! { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
  log "installing chromium and chromium-driver (browser test)"; apt_install chromium chromium-driver
fi

echo "$url" >&3
