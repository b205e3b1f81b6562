"""Online serving: the champion over HTTP, following its alias, with Prometheus metrics."""
