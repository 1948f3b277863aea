#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine of this kind, and starts the
# services the integration tests talk to (PostgreSQL, MariaDB, Redis) when they are down.
# Idempotent: safe to run again. Used by the README's test command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in sshd:openssh-server ssh:openssh-client pv:pv jq:jq hyperfine:hyperfine; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "test-setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Services (python-svc machines ship them; start any that are down).
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if command -v redis-server >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
if [ -x /usr/sbin/mariadbd ] && ! mariadb -h 127.0.0.1 -uroot -e 'select 1' >/dev/null 2>&1; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 1 30); do mariadb -h 127.0.0.1 -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# The compiled stream core must really import (a broken build must not hide behind the twin).
python3 -c "import clipipe.fastpipe as f; assert f.IMPLEMENTATION == 'cython', f.IMPLEMENTATION"
