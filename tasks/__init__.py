"""Thin Prefect tasks over qbq's pipeline functions: each is a few lines of glue."""
