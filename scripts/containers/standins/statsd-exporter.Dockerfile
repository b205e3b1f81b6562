# syntax=docker/dockerfile:1
# Test stand-in for `prom/statsd-exporter`, which no registry reachable here serves (not in
# Debian, no Go module proxy). Not statsd_exporter: a small program on Debian's Python and
# prometheus-client that keeps the contract docker-compose.yml uses: statsd lines on UDP
# (--statsd.listen-udp), Prometheus text on /metrics (--web.listen-address), the glob
# mappings of --statsd.mapping-config applied as statsd_exporter applies them, `wget` for the
# healthcheck, user nobody. The README names it as a stand-in.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-prometheus-client python3-yaml wget \
 && rm -rf /var/lib/apt/lists/*
COPY statsd_exporter.py /usr/local/bin/statsd_exporter
EXPOSE 9102 9125/udp
USER nobody
ENTRYPOINT ["python3", "/usr/local/bin/statsd_exporter"]
