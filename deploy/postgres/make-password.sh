#!/bin/sh
# The attestation store's database password for docker-compose.yml, made once:
#
#   deploy/postgres/make-password.sh DIR
#
# DIR/password holds the password alone: the postgres image reads it
# (POSTGRES_PASSWORD_FILE) when it creates the database. DIR/pgpass holds it in libpq's
# password file format for the replicas (PGPASSFILE). Both are mode 0600: libpq ignores a
# password file that others may read. A password already in DIR/password is kept (write
# your own there before the database is first created); pgpass is derived from it on
# every run. Nothing is printed but the files' names.
set -eu
umask 077
dir=${1:?usage: make-password.sh DIR}
mkdir -p "$dir"
if [ ! -s "$dir/password" ]; then
    # 32 random bytes, URL-safe base64 without padding: nothing a shell or libpq escapes
    head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_' >"$dir/password.new"
    mv "$dir/password.new" "$dir/password"
    echo "store-secret-init: a new database password in $dir/password" >&2
fi
# libpq's format is host:port:database:user:password, with ':' and '\' escaped. $(...)
# drops trailing newlines, as the postgres image does when it reads the file.
password=$(cat "$dir/password")
escaped=$(printf '%s' "$password" | sed 's/[\\:]/\\&/g')
printf '*:*:*:*:%s\n' "$escaped" >"$dir/pgpass.new"
mv "$dir/pgpass.new" "$dir/pgpass"
chmod 600 "$dir/password" "$dir/pgpass"
echo "store-secret-init: $dir/pgpass for the replicas (PGPASSFILE)" >&2
