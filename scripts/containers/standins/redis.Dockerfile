# syntax=docker/dockerfile:1
# Test stand-in for the official `redis` image, where it cannot be pulled: Debian's Redis 7.0
# on the Debian base. As docker-compose.yml uses it: `redis-server ARGS` as the command,
# `redis-cli` for the healthcheck, data in /data, the server as user redis, and the official
# build's defaults (protected mode off, every interface: the network is the boundary).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
VOLUME /data
EXPOSE 6379
USER redis
CMD ["redis-server", "--protected-mode", "no"]
