"""The Veil cloud: the API process and its parts.

- ``app``: the FastAPI app factory; ``api/``: the routes (``api/routes/<resource>.py``) and their
  dependencies (``api/deps.py``); ``schemas``: request and response bodies; ``errors``: the JSON errors.
- ``gateway``, ``keyring``, ``key_lifecycle``, ``replay``: the Oblivious HTTP gateway (RFC 9458) and its
  keys; ``relay``: the OHTTP relay, a separate process.
- ``engine``: batched model serving; ``store/``: the database (SQLite or PostgreSQL); ``jobs/``: training
  jobs run from stored uploads; ``workers``: several API processes on one port.

Import the submodules directly; this package imports nothing at import time.
"""

__all__: list[str] = []
