"""Alembic migrations of the metadata schema (`registry migrate` runs them)."""
