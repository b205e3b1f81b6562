"""A stand-in for prom/statsd-exporter in the stack's tests (see statsd-exporter.Dockerfile).

As statsd_exporter does by default: counters (`c`) become counters under the mapped name itself
(no `_total` added; exposed untyped), gauges (`g`) gauges, timers (`ms`, `h`, `d`) summaries in seconds
(`_sum`, `_count`). A name matching a glob mapping (`*` is one part between dots) takes the
mapping's name and labels with `$n`/`${n}` filled in; any other name has every character
outside [a-zA-Z0-9_] replaced by `_`. A malformed line is skipped.
"""

from __future__ import annotations

import argparse
import re
import socketserver
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import yaml
from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, Metric

Rule = tuple[re.Pattern[str], dict[str, Any]]
TYPES = {"c": "counter", "g": "gauge", "ms": "summary", "h": "summary", "d": "summary"}


def glob_rules(path: str | None) -> list[Rule]:
    if not path:
        return []
    with open(path) as handle:
        mappings = (yaml.safe_load(handle) or {}).get("mappings") or []
    rules = []
    for mapping in mappings:
        parts = [re.escape(part).replace(r"\*", "([^.]*)") for part in mapping["match"].split(".")]
        rules.append((re.compile("^" + r"\.".join(parts) + "$"), mapping))
    return rules


def fill(template: str, groups: tuple[str, ...]) -> str:
    return re.sub(r"\$\{?(\d+)\}?", lambda m: groups[int(m.group(1)) - 1], template)


def mapped(name: str, rules: list[Rule]) -> tuple[str, tuple[tuple[str, str], ...]]:
    for pattern, mapping in rules:
        match = pattern.match(name)
        if match:
            labels = mapping.get("labels") or {}
            filled = tuple(sorted((k, fill(str(v), match.groups())) for k, v in labels.items()))
            return fill(mapping["name"], match.groups()), filled
    return re.sub(r"[^a-zA-Z0-9_]", "_", name), ()


class Store:
    """Every series seen, by name and labels: a value, or a sum and a count."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.lock = threading.Lock()
        self.kinds: dict[str, str] = {}
        self.values: dict[str, dict[tuple[tuple[str, str], ...], list[float]]] = defaultdict(dict)

    def observe(self, line: str) -> None:
        name, _, rest = line.partition(":")
        fields = rest.split("|")
        kind = TYPES.get(fields[1]) if len(fields) > 1 else None
        if not name or kind is None:
            return
        value = float(fields[0])
        metric, labels = mapped(name, self.rules)
        with self.lock:
            if self.kinds.setdefault(metric, kind) != kind:
                return  # one name, two kinds: statsd_exporter drops the conflicting line too
            series = self.values[metric].setdefault(labels, [0.0, 0.0])
            if kind == "counter":
                series[0] += value
            elif kind == "gauge":
                series[0] = value
            else:
                series[0] += value / 1000.0 if fields[1] == "ms" else value
                series[1] += 1

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            for name, kind in self.kinds.items():
                # a counter under its own name, as statsd_exporter exposes it: prometheus_client
                # would add `_total` to a counter, so it is left untyped here
                family = Metric(name, f"statsd {name}", "untyped" if kind == "counter" else kind)
                for labels, (value, count) in self.values[name].items():
                    if kind == "summary":
                        family.add_sample(f"{name}_sum", dict(labels), value)
                        family.add_sample(f"{name}_count", dict(labels), count)
                    else:
                        family.add_sample(name, dict(labels), value)
                yield family


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--statsd.listen-udp", dest="udp", default=":9125")
    parser.add_argument("--web.listen-address", dest="web", default=":9102")
    parser.add_argument("--statsd.mapping-config", dest="mapping", default=None)
    args = parser.parse_args()
    store = Store(glob_rules(args.mapping))
    REGISTRY.register(store)
    host, port = address(args.web)
    start_http_server(port, addr=host)

    class Lines(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            for line in self.request[0].decode(errors="replace").splitlines():
                try:
                    store.observe(line.strip())
                except (ValueError, IndexError):
                    continue

    with socketserver.ThreadingUDPServer(address(args.udp), Lines) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
