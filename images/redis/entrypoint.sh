#!/bin/sh
# forgeci's Redis entrypoint: Debian's /etc/redis/redis.conf daemonizes and logs to a file, so the server runs
# without it, in the foreground, logging to the container's output, as the redis user, on 127.0.0.1 (every
# container of the pod shares that address), without snapshots (a service lives as long as its job). Options
# given to the service (`command = ["redis-server", "--appendonly", "yes"]`) come last, so they win.
set -eu

# `--port 6380` alone means the server with those options; any other command (redis-cli, a job's shell) runs as is.
if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" != redis-server ]; then exec "$@"; fi
shift

set -- redis-server --bind 127.0.0.1 -::1 --daemonize no --logfile "" --save "" --appendonly no "$@"
if [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
