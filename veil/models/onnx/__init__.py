"""ONNX exports of everything a phone computes (``veil export-onnx``).

Modules: :mod:`.graphs` (which graphs each family exports, shapes, opset), :mod:`.samplers`,
:mod:`.updates` and :mod:`.policy` (the graphs, each the ONNX form of a numpy reference in
:mod:`veil.client_sdk.distributions.noise`, :mod:`veil.client_sdk.runtime.reference` or
:mod:`veil.client_sdk.policy_guard`), :mod:`.manifest` (the
folder's ``manifest.json``) and :mod:`.export` (:func:`~veil.models.onnx.export.export_onnx`). Import the
submodules directly; this package imports nothing at import time (``onnx`` is a build-time dependency).
"""

__all__: list[str] = []
