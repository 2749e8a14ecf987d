"""The `veil` command line (thin wiring; see veil.cli.main)."""

__all__: list[str] = []
