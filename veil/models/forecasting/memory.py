"""Peak memory of a block of code: the CUDA allocator's peak on a GPU, sampled resident memory on CPU."""

from __future__ import annotations

import resource
import sys
import threading

import torch

__all__ = ["PeakMemory", "max_rss_mb"]


def max_rss_mb() -> float:
    """The largest resident set this process has had over its life, in MB (``getrusage``; Linux reports
    kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class PeakMemory:
    """Peak memory in MB above the level at entry: the CUDA allocator's peak, or sampled RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

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
