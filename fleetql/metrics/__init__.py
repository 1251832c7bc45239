"""Prometheus metrics: the instruments each component updates, the fleet read from PostgreSQL at
scrape time, and the ``/metrics`` endpoint that renders both (README "Metrics")."""
