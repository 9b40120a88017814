"""Prefect flows of the elmrec pipeline."""
