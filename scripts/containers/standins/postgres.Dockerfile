# syntax=docker/dockerfile:1
# Test stand-in for the official `postgres` image, where it cannot be pulled: Debian's
# PostgreSQL 15 on the Debian base, behind an entrypoint that keeps the official image's
# contract as docker-compose.yml uses it: POSTGRES_USER/_PASSWORD/_DB, PGDATA at
# /var/lib/postgresql/data, scripts in /docker-entrypoint-initdb.d run once on an empty data
# folder, password logins over TCP, `pg_isready` on PATH, the server as user postgres.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /docker-entrypoint-initdb.d /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
