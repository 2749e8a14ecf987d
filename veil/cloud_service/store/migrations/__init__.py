"""Alembic migrations of the Veil store (run by :func:`veil.cloud_service.store.db.migrate`)."""
