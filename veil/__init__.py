"""Veil: privacy-preserving federated personalisation for LLMs.

Subpackages (dependencies point down this list): ``client_sdk`` (runs on phones; numpy only), ``cloud_service``,
``models``, ``privacy_analysis``, ``simulation``, ``kernels`` and ``cli``. Nothing is imported
here, so ``import veil.client_sdk`` never pulls in torch.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
