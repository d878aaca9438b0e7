"""Prefect flows: grade_assessment (plan → grade → reduce → deliver) and its companions."""
