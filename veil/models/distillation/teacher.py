"""Cached teacher signals: the top-k log-probabilities of every position plus the rest's log-mass.

Full teacher logits cost ``4 V`` bytes a token in float32 (196,608 bytes for SmolLM2's 49,152 ids);
keeping them for a whole data set, or sending them from a teacher server, grows with the vocabulary. A
:class:`TopKTeacher` keeps, per position, the ``k`` most likely ids, their log-probabilities and the
log of the probability left outside them (the *tail*): ``12 k + 4`` bytes a token, whatever ``V``.

The losses of :mod:`veil.models.distillation.losses` accept one in place of the teacher logits and
compare the two models on ``k + 1`` categories (the ``k`` ids and the tail as one bucket); the module's
docstring describes the approximation. Temperature cannot be changed after the fact (the tail's shape is
gone), so the one the log-probabilities were taken at is recorded and checked by the losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["TopKTeacher"]

_SUFFIXES = (".npz", ".safetensors")


@dataclass(frozen=True)
class TopKTeacher:
    """The teacher's ``k`` most likely ids per position, their log-probabilities and the tail's log-mass.

    Build one with :meth:`from_logits`; store it with :meth:`save` and read it back with :meth:`load`.

    Attributes
    ----------
    ids : Tensor
        ``(B, T, k)`` int64, the teacher's top-``k`` token ids per position, most likely first.
    logprobs : Tensor
        ``(B, T, k)`` float, their log-probabilities under the full (not renormalised) teacher
        distribution at ``temperature``.
    tail_logmass : Tensor
        ``(B, T)`` float, ``log(1 - sum(exp(logprobs)))``: the log-probability of every other id;
        ``-inf`` when ``k`` equals the vocabulary size.
    vocab_size : int
        The teacher's vocabulary size ``V``; the losses refuse student logits of another width (a
        mismatched vocabulary gives silently wrong targets).
    temperature : float
        The softmax temperature the log-probabilities were taken at.
    """

    ids: Tensor
    logprobs: Tensor
    tail_logmass: Tensor
    vocab_size: int
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.ids.dim() != 3:
            raise ValueError(f"ids must be (B, T, k), got shape {tuple(self.ids.shape)}")
        if self.ids.dtype != torch.int64:
            raise ValueError(f"ids must be int64, got {self.ids.dtype}")
        if self.logprobs.shape != self.ids.shape:
            raise ValueError(
                f"logprobs must have the ids' shape {tuple(self.ids.shape)}, got {tuple(self.logprobs.shape)}"
            )
        if not self.logprobs.is_floating_point():
            raise ValueError(f"logprobs must be floating point, got {self.logprobs.dtype}")
        if self.tail_logmass.shape != self.ids.shape[:2]:
            raise ValueError(
                f"tail_logmass must be (B, T) = {tuple(self.ids.shape[:2])}, "
                f"got {tuple(self.tail_logmass.shape)}"
            )
        if not 1 <= self.k <= self.vocab_size:
            raise ValueError(f"k must be in [1, vocab_size={self.vocab_size}], got {self.k}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")

    @property
    def k(self) -> int:
        """The number of ids kept per position."""
        return int(self.ids.shape[-1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the three tensors."""
        return sum(t.nbytes for t in (self.ids, self.logprobs, self.tail_logmass))

    @classmethod
    def from_logits(cls, logits: Tensor, k: int, temperature: float = 1.0) -> TopKTeacher:
        """Keep the top-``k`` of teacher logits ``(B, T, V)`` at ``temperature``.

        The log-probabilities are computed in at least float32 and kept in that dtype; the tail's
        log-mass is a log-sum-exp over the ids left out (exact, unlike ``log(1 - sum p)`` when the top
        ``k`` hold nearly all the mass).
        """
        if logits.dim() != 3:
            raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
        vocab_size = int(logits.shape[-1])
        if not 1 <= k <= vocab_size:
            raise ValueError(f"k must be in [1, V={vocab_size}], got {k}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        with torch.no_grad():
            dtype = torch.promote_types(logits.dtype, torch.float32)
            logp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)  # (B, T, V)
            top = logp.topk(k, dim=-1)  # values, indices: (B, T, k), sorted descending
            rest = logp.scatter(-1, top.indices, float("-inf"))  # top-k ids removed
            tail = torch.logsumexp(rest, dim=-1)  # (B, T); -inf when k == V
        return cls(top.indices, top.values, tail, vocab_size, float(temperature))

    def to(self, device: torch.device | str) -> TopKTeacher:
        """A copy on ``device``."""
        return TopKTeacher(
            self.ids.to(device),
            self.logprobs.to(device),
            self.tail_logmass.to(device),
            self.vocab_size,
            self.temperature,
        )

    def save(self, path: str | Path) -> None:
        """Write to ``path``: ``.npz`` (numpy) or ``.safetensors``, chosen by the suffix.

        bfloat16 log-probabilities are written as float32 to ``.npz`` (numpy has no bfloat16).
        """
        path = Path(path)
        tensors = {
            "ids": self.ids.detach().cpu().contiguous(),
            "logprobs": self.logprobs.detach().cpu().contiguous(),
            "tail_logmass": self.tail_logmass.detach().cpu().contiguous(),
        }
        if path.suffix == ".npz":
            arrays = {
                name: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for name, t in tensors.items()
            }
            np.savez(
                path,
                **arrays,
                vocab_size=np.int64(self.vocab_size),
                temperature=np.float64(self.temperature),
            )
        elif path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {"vocab_size": str(self.vocab_size), "temperature": repr(self.temperature)}
            save_file(tensors, str(path), metadata=meta)
        else:
            raise ValueError(f"path must end in one of {_SUFFIXES}, got {str(path)!r}")

    @classmethod
    def load(cls, path: str | Path) -> TopKTeacher:
        """Read what :meth:`save` wrote (the suffix picks the format)."""
        path = Path(path)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    torch.from_numpy(data["ids"]),
                    torch.from_numpy(data["logprobs"]),
                    torch.from_numpy(data["tail_logmass"]),
                    int(data["vocab_size"]),
                    float(data["temperature"]),
                )
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if "vocab_size" not in meta or "temperature" not in meta:
                    raise ValueError(f"{str(path)!r} lacks the vocab_size/temperature metadata")
                return cls(
                    f.get_tensor("ids"),
                    f.get_tensor("logprobs"),
                    f.get_tensor("tail_logmass"),
                    int(meta["vocab_size"]),
                    float(meta["temperature"]),
                )
        raise ValueError(f"path must end in one of {_SUFFIXES}, got {str(path)!r}")
