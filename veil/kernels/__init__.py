"""GPU kernels (Triton), each with a plain-torch reference and one dispatch function.

A dispatch function runs the Triton kernel when its tensors are on a CUDA device and Triton imports,
and the reference otherwise (CPU, or no Triton); ``VEIL_KERNELS=reference`` forces the reference
everywhere and ``VEIL_KERNELS=triton`` forces the kernel (on CPU only under Triton's interpreter,
``TRITON_INTERPRET=1``, which is how the tests check the kernels without a GPU).
"""

from veil.kernels.kv_prune import compact_kv, last_query_attention

__all__ = ["compact_kv", "last_query_attention"]
