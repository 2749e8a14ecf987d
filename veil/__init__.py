"""Veil: privacy-preserving federated personalisation for LLMs.

Subpackages, from the top layer down (a layer may import the ones below it, never those above; the
``[tool.importlinter]`` contracts in ``pyproject.toml`` check this):

- ``cli``: the ``veil`` command, thin wiring;
- ``simulation`` (synthetic fleets and experiments) and ``testing`` (fuzzers for tests and benchmarks);
- ``cloud_service``: the API process, the OHTTP gateway and relay, storage, training jobs;
- ``models``: model loading, the personalised LM, training;
- ``privacy_analysis`` (bounds, attacks, accounting, audit) and ``kernels`` (GPU kernels);
- ``reporting``: helpers of the HTML reports;
- ``client_sdk``: what runs on phones (numpy, cryptography, httpx, onnxruntime; never torch);
- ``settings`` and ``progress``: small helpers that import nothing from Veil.

Nothing is imported here, so ``import veil.client_sdk`` never pulls in torch.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
