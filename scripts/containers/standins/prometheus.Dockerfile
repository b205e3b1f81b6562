# syntax=docker/dockerfile:1
# Test stand-in for the official `prom/prometheus` image, where it cannot be pulled: Debian's
# Prometheus 2.42 (with promtool) on the Debian base. As docker-compose.yml uses it:
# `prometheus` as entrypoint, the configuration in /etc/prometheus, data under /prometheus
# (the working folder), `wget` for the healthcheck, the server as user nobody.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
USER nobody
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
