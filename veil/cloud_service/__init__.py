"""veil.cloud_service (later issues)."""

__all__: list[str] = []
