"""veil.kernels (later issues)."""

__all__: list[str] = []
