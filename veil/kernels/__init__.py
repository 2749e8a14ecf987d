"""GPU kernels for the cloud-side models (Triton), imported by :mod:`veil.models`.

Each kernel will live in its own module with three parts: the Triton kernel, a plain-torch reference
that computes the same thing, and one dispatch function that runs the kernel on a CUDA device and the
reference elsewhere; tests compare the two on fresh random inputs, odd shapes and each dtype. The first
kernel will be KV-cache compression's (scoring and pruning cached keys and values).
This package is empty until then.
"""

__all__: list[str] = []
