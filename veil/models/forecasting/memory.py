"""Peak memory of a block of code: the CUDA allocator's peak on a GPU, sampled resident memory on CPU."""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
import threading

import torch

__all__ = ["PeakMemory", "max_rss_mb", "release_free_heap"]


def max_rss_mb() -> float:
    """The largest resident set this process has had over its life, in MB (``getrusage``; Linux reports
    kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def release_free_heap() -> bool:
    """Give the pages of freed heap blocks back to the OS (glibc's ``malloc_trim(0)``), so that memory a
    block of code reuses counts again in the resident set; ``False`` where there is no glibc.

    Without it, a measurement after a larger one reads about nothing: torch's CPU tensors come from
    malloc, which keeps freed blocks below its mmap threshold resident and serves later tensors from them.
    """
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols the process already has: libc's
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
    trim(0)
    return True


class PeakMemory:
    """Peak memory in MB above the level at entry: the CUDA allocator's peak, or sampled RSS on CPU (after
    :func:`release_free_heap`, so that earlier, freed allocations do not hide this block's)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        release_free_heap()
        self._proc, self._stop = psutil.Process(), threading.Event()
        self._base = self._top = self._proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(0.02):
                self._top = max(self._top, self._proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self._top, self._proc.memory_info().rss) - self._base
        self.peak_mb /= 2**20
