#!/bin/sh
# forgeci's PostgreSQL entrypoint, for Debian's packages in a rootless container. Debian's `postgres` refuses to run
# as uid 0 (a rootless container's root) and its binaries are not on PATH; POSTGRES_PASSWORD, POSTGRES_USER,
# POSTGRES_DB, POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD and /docker-entrypoint-initdb.d are a convention of
# other images that is implemented here: initdb as the postgres user, the password set, the database created, the
# server on 127.0.0.1 (every container of the pod shares that address).
set -eu

# `-c fsync=off` alone means the server with those options; any other command (psql, a job's shell) runs as is.
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi
shift

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
socket=/var/run/postgresql
root=false
[ "$(id -u)" = 0 ] && root=true

as_postgres() {
  if $root; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi
}

if $root; then
  mkdir -p "$PGDATA" "$socket"
  chown postgres:postgres "$PGDATA" "$socket"
  chmod 700 "$PGDATA"
  chmod 2775 "$socket"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "forgeci-postgres: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    echo "forgeci-postgres: set it in the service's env (or POSTGRES_HOST_AUTH_METHOD=trust to allow any login)" >&2
    exit 1
  fi
  pwfile=""
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    $root && chown postgres "$pwfile"
  fi
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of options, as in other images
  as_postgres initdb -D "$PGDATA" --username="$user" ${pwfile:+--pwfile="$pwfile"} --auth-local=trust \
    --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-} > /dev/null
  [ -n "$pwfile" ] && rm -f "$pwfile"

  scripts=$(ls /docker-entrypoint-initdb.d/ 2>/dev/null || true)
  if [ "$db" != postgres ] || [ -n "$scripts" ]; then
    # A server on the socket only, so that no client can connect before the set-up is done.
    as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k $socket" -w start > /dev/null
    if [ "$db" != postgres ]; then
      as_postgres psql -v ON_ERROR_STOP=1 -q -h "$socket" -U "$user" -d postgres \
        -c "CREATE DATABASE \"$db\"" > /dev/null
    fi
    for f in /docker-entrypoint-initdb.d/*; do
      case "$f" in
        *.sh) echo "forgeci-postgres: running $f" >&2; . "$f" ;;
        *.sql) echo "forgeci-postgres: running $f" >&2
               as_postgres psql -v ON_ERROR_STOP=1 -q -h "$socket" -U "$user" -d "$db" -f "$f" ;;
      esac
    done
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
  fi
fi

if $root; then
  exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 -k "$socket" "$@"
fi
exec postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 -k "$socket" "$@"
