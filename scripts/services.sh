#!/usr/bin/env bash
# Make sure the local services the tests use are running and configured:
#   - PostgreSQL on 127.0.0.1:5432 with logical decoding (wal_level=logical), for CDC
#   - MariaDB on 127.0.0.1:3306 with a row-based binary log (full row images), for CDC
# Idempotent: it changes and restarts a service only when its settings differ.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "services: $*" >&2; }

wait_for() {  # wait_for DESCRIPTION COMMAND...
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  say "$what did not become ready"; return 1
}

# -- PostgreSQL ------------------------------------------------------------------
pg_cluster() { ls /etc/postgresql | sort -V | tail -n 1; }
pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q; }
pg() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 -tAc "$1"; }

if command -v pg_ctlcluster >/dev/null; then
  if ! pg_ready; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(pg_cluster)" main start || true
    wait_for "PostgreSQL" pg_ready
  fi
  if [ "$(pg 'SHOW wal_level')" != "logical" ]; then
    say "enabling logical decoding in PostgreSQL (wal_level=logical; restart)"
    pg "ALTER SYSTEM SET wal_level = logical" >/dev/null
    pg_ctlcluster --skip-systemctl-redirect "$(pg_cluster)" main restart
    wait_for "PostgreSQL" pg_ready
  fi
fi

# -- MariaDB -----------------------------------------------------------------------
# Read by mariadbd before /etc/mysql/my.cnf (this server has no include folder).
MY_CNF=/etc/my.cnf
my() { mariadb -h 127.0.0.1 -P 3306 -uroot -Nse "$1"; }
my_ready() { mariadb-admin -h 127.0.0.1 -P 3306 -uroot ping; }

if command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; then
  if ! my_ready >/dev/null 2>&1; then
    say "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for "MariaDB" my_ready
  fi
  # The file makes the settings survive a restart; the restart applies them now.
  WANT_CNF='# Written by Headwater'"'"'s scripts/services.sh: change data capture reads the
# binary log in row format with full row images and column names.
[mysqld]
log_bin = mysql-bin
binlog_format = ROW
binlog_row_image = FULL
binlog_row_metadata = FULL
server_id = 1
expire_logs_days = 2'
  if [ "$(cat "$MY_CNF" 2>/dev/null)" != "$WANT_CNF" ]; then
    if [ -f "$MY_CNF" ] && ! grep -q "Headwater" "$MY_CNF"; then
      say "$MY_CNF exists and is not Headwater's; add these settings to it by hand:"
      printf '%s\n' "$WANT_CNF"; exit 1
    fi
    say "writing the binary log settings to $MY_CNF"
    printf '%s\n' "$WANT_CNF" > "$MY_CNF"
  fi
  if [ "$(my 'SELECT CONCAT(@@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata)')" != "ONROWFULLFULL" ]; then
    say "enabling the row-based binary log in MariaDB (restart)"
    mariadb-admin -h 127.0.0.1 -P 3306 -uroot shutdown || true
    for _ in $(seq 1 60); do pgrep -x mariadbd >/dev/null || break; sleep 0.5; done
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_for "MariaDB" my_ready
  fi
fi
exit 0
