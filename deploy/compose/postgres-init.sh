#!/bin/sh
# First start of the compose Postgres only (docker-entrypoint-initdb.d): the three roles of
# docs/audit-log.md with development passwords, and the database owned by civicline_owner so
# that `civicline-migrate` runs as the owner and the services as the writer, as in production.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
CREATE ROLE civicline_owner LOGIN PASSWORD 'dev-owner';
CREATE ROLE civicline_writer LOGIN PASSWORD 'dev-writer';
CREATE ROLE civicline_auditor LOGIN PASSWORD 'dev-auditor';
CREATE DATABASE civicline OWNER civicline_owner;
SQL
