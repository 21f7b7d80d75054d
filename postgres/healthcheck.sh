#!/bin/sh
# The postgres container's health check (compose.yml): healthy while the server accepts
# connections. Its first pass after each start also reloads the configuration once, which wakes
# the checkpointer: after a start, the checkpointer computes its first sleep while the startup
# process still runs and then sleeps up to checkpoint_timeout (5 min) before it first honours
# archive_timeout (measured on PostgreSQL 17: no WAL segment archived in 60 s of writes after a
# restart; one every archive_timeout after any reload). So the archive keeps its few seconds of
# RPO after every start: a deploy's, a `docker restart`, the restart policy's after a reboot.
# The marker lives in /tmp, the container's tmpfs, which every start empties.
set -eu
pg_isready -q -U "$POSTGRES_USER" -d "$POSTGRES_DB" || exit 1
marker=/tmp/.checkpointer-woken
if [ ! -e "$marker" ] \
  && psql -X -Atq -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "SELECT pg_reload_conf()" >/dev/null; then
  : >"$marker"
fi
