"""fleetwatch: a Prometheus exporter and production validator for LLM inference fleets."""

__version__ = "0.1.0"
