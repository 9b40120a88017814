"""Thin Prefect tasks, one per pipeline stage: they take settings, call the library, return paths."""
