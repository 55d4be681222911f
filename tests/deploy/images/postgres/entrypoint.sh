#!/bin/sh
set -eu
BIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    install -d -m 0700 -o postgres -g postgres "$PGDATA"
    password=$(mktemp)
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then cat "$POSTGRES_PASSWORD_FILE" > "$password"
    else printf '%s' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD or _FILE is required}" > "$password"; fi
    chown postgres "$password"
    runuser -u postgres -- "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$password" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$password"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses='' -k /tmp" -w start
    [ "$POSTGRES_DB" = postgres ] || runuser -u postgres -- "$BIN/createdb" -h /tmp -U "$POSTGRES_USER" "$POSTGRES_DB"
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' -k /tmp
