"""Cloud-side models: loading, the personalised LM, training (torch + transformers).

Import the submodules directly (``veil.models.loading``, ``veil.models.personalization``); this
package imports nothing at import time.
"""

__all__: list[str] = []
