"""Seeing runs without leaking personal data: JSON logs, per-process metrics, reports, purges.

`logs` is safe to import anywhere (stdlib only); `metrics`, `reports` and `lifecycle` read
the store; nothing here imports Prefect (the artifacts live in `flows/artifacts.py`).
See README.md in this folder for what is logged, stored, exported and purged.
"""
