"""Grafana for Ferry: dashboards generated from code (generate.py), provisioning, query helpers."""
