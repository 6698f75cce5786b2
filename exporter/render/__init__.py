"""Generators: catalogue and plans -> rules, runbook (and later dashboards)."""
