"""The interface every user-distribution family implements, plus shared validation and file I/O.

A user distribution is the private law ``P_user`` a phone samples soft-token embeddings from (IDfree-PL,
arXiv:2501.06062, section 2.2). Samples have shape ``(n_tokens, dim)``; the parameters never leave the
device. Each family lives in its own module and registers itself in :data:`FAMILIES` by defining the class
attribute ``family``, which is also the name written into saved files.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from veil.client_sdk.atomic_files import atomic_write

__all__ = ["FAMILIES", "UserDistribution", "as_param", "check_sample_shape"]

FAMILIES: dict[str, type[UserDistribution]] = {}
"""Registry ``family name -> class``, filled when a family module is imported."""


def as_param(name: str, value: Any, shape: tuple[int, ...] | None = None, ndim: int | None = 2) -> np.ndarray:
    """Validate a parameter array and return a read-only float64 copy.

    Parameters
    ----------
    name : str
        Parameter name used in error messages.
    value : array_like
    shape : tuple of int, optional
        Required exact shape.
    ndim : int, optional
        Required number of dimensions (default 2, i.e. ``(n_tokens, dim)``); ignored when ``shape`` is given.

    Raises
    ------
    ValueError
        If the value is not numeric, has the wrong shape, or holds NaN/Inf.
    """
    try:
        arr = np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {value!r}") from exc
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {arr.shape}")
    if shape is None and ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D (n_tokens, dim), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(f"{name} must be finite (no NaN/Inf), got {bad}")
    arr.flags.writeable = False
    return arr


def check_sample_shape(name: str, x: Any, event_shape: tuple[int, int]) -> np.ndarray:
    """Return ``x`` as a float64 array of shape ``(..., n_tokens, dim)`` or raise ``ValueError``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from exc
    if arr.ndim < 2 or arr.shape[-2:] != event_shape:
        raise ValueError(f"{name} must have shape (..., {event_shape[0]}, {event_shape[1]}), got {arr.shape}")
    return arr


class UserDistribution(ABC):
    """A private per-user distribution over soft-token embeddings of shape ``(n_tokens, dim)``.

    Subclasses set ``family`` and implement the abstract methods; instances are immutable (parameters are
    read-only arrays and every update returns a new object).
    """

    family: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    """What the family supports beyond sampling, by name: ``learn`` (gradient updates on the phone),
    ``policy`` (the numpy policy guard), ``policy_graph`` (an ONNX policy graph), ``gdp`` (a Gaussian-DP
    ``mu`` to the prior), ``torch`` (a torch twin for training), ``choose`` (a codebook choice instead of
    learning). Backends, the client and the parity tests read these instead of testing classes."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:
            FAMILIES[cls.family] = cls

    # ------------------------------------------------------------------ shape and moments
    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """Event shape ``(n_tokens, dim)``."""

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """Draw fresh samples: float64 of shape ``(n_tokens, dim)``, or ``(size, n_tokens, dim)``.

        Draws the noise (:meth:`draw_noise`) and transforms it (:meth:`sample_from_noise`), the same
        function of the same noise as the family's ONNX sampler graph.
        """
        x = self.sample_from_noise(self.draw_noise(rng, 1 if size is None else int(size)))
        return x[0] if size is None else x

    @abstractmethod
    def noise_shapes(self, size: int, **options: Any) -> dict[str, tuple[int, ...]]:
        """The noise tensors ``size`` samples need: ``name -> shape``.

        A name ending in ``normal`` is filled with i.i.d. standard normal draws, one ending in ``uniform``
        with i.i.d. uniform draws on ``(0, 1)``. ``options`` are construction settings a family may read
        (the Beta family's ``construction``); others ignore them.
        """

    def draw_noise(self, rng: np.random.Generator, size: int = 1, **options: Any) -> dict[str, np.ndarray]:
        """Fresh noise for ``size`` samples from ``rng``, named and shaped as :meth:`noise_shapes` says."""
        out = {}
        for name, shape in self.noise_shapes(size, **options).items():
            if name.endswith("normal"):
                out[name] = rng.standard_normal(shape)
            elif name.endswith("uniform"):
                out[name] = rng.random(shape)
            else:  # a family declaring another kind of noise is a programming error
                raise TypeError(f"noise {name!r} must end in 'normal' or 'uniform'")
        return out

    @abstractmethod
    def sample_from_noise(self, noise: Mapping[str, np.ndarray]) -> np.ndarray:
        """Samples ``(B, n_tokens, dim)`` from noise shaped as :meth:`noise_shapes` ``(B)`` says."""

    @abstractmethod
    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Total log density of ``x`` (shape ``(..., n_tokens, dim)``), summed over coordinates: ``(...)``."""

    @abstractmethod
    def mean(self) -> np.ndarray:
        """Mean, shape ``(n_tokens, dim)``."""

    @abstractmethod
    def variance(self) -> np.ndarray:
        """Per-coordinate variance, shape ``(n_tokens, dim)``."""

    # ------------------------------------------------------------------ learning
    @abstractmethod
    def unconstrained(self) -> dict[str, np.ndarray]:
        """Parameters in the unconstrained space the optimiser works in (fresh copies)."""

    @abstractmethod
    def with_unconstrained(self, params: Mapping[str, np.ndarray]) -> Self:
        """A new distribution with some unconstrained parameters replaced; missing keys keep their values."""

    @abstractmethod
    def sample_vjp(
        self, x: np.ndarray, grad_x: np.ndarray, noise: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Pull ``dL/dx`` for a sample ``x`` of this distribution back to the unconstrained parameters.

        Parameters
        ----------
        x : ndarray, shape ``(n_tokens, dim)`` or ``(B, n_tokens, dim)``
            Samples this distribution produced.
        grad_x : ndarray, same shape as ``x``
            ``dL/dx``.
        noise : mapping, optional
            The noise that made ``x`` (:meth:`draw_noise`). A family whose sample is not a function of
            ``x`` alone (Beta's rejection construction) differentiates through it, as its update graph
            does; the others ignore it.

        Returns
        -------
        dict
            ``dL/d(param)`` for every key of :meth:`unconstrained`, summed over the batch.
        """

    def toward(self, other: UserDistribution, t: float) -> Self:
        """The point a fraction ``t`` of the way from this distribution to ``other`` (same family and
        shape) on the family's line: linear in the unconstrained parameters by default."""
        start, end = self.unconstrained(), other.unconstrained()
        return self.with_unconstrained({k: start[k] + t * (end[k] - start[k]) for k in start})

    # ------------------------------------------------------------------ inputs of the ONNX graphs
    def onnx_sample_feeds(self, noise: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Inputs of the family's ``<family>_sample`` graph: parameters and the noise of :meth:`draw_noise`."""
        raise ValueError(f"the {self.family!r} family has no sampler graph")

    def onnx_update_feeds(self, x: np.ndarray, noise: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Inputs of the ``<family>_update`` graph besides the parameters, gradient and optimiser state."""
        raise ValueError(f"the {self.family!r} family has no update graph")

    def onnx_policy_feeds(self, prior: UserDistribution) -> dict[str, Any]:
        """Inputs of the ``<family>_policy`` graph besides the limits: these parameters and the prior's."""
        raise ValueError(f"no policy graph for the {self.family!r} family")

    # ------------------------------------------------------------------ persistence
    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """Constrained parameters to store, without the ``family`` entry."""

    @classmethod
    @abstractmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        """Rebuild from :meth:`_arrays` output; raise ``KeyError`` or ``ValueError`` when malformed."""

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the distribution to ``path`` as ``.npz``, atomically and readable by the owner only.

        The file is written to a temporary file (mode 0600) in the same directory and moved into place
        with :func:`os.replace`, so a crash never leaves a half-written parameter file.
        """
        atomic_write(
            path, lambda fh: np.savez(fh, family=np.array(self.family), **self._arrays()), mode=0o600
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UserDistribution:
        """Read a file written by :meth:`save`.

        Called on :class:`UserDistribution` it dispatches on the stored family; called on a family class it
        also checks that the file holds that family.

        Raises
        ------
        ValueError
            Unknown or mismatched family, or malformed contents.
        """
        with np.load(os.fspath(path), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return cls._dispatch(arrays, source=os.fspath(path))

    @classmethod
    def _dispatch(cls, arrays: Mapping[str, np.ndarray], source: str) -> UserDistribution:
        if "family" not in arrays:
            raise ValueError(f"{source}: no 'family' entry; not a saved user distribution")
        family = str(arrays["family"])
        if family not in FAMILIES:
            raise ValueError(f"{source}: unknown family {family!r}; known: {sorted(FAMILIES)}")
        target = FAMILIES[family]
        if cls is not UserDistribution and not issubclass(target, cls):
            raise ValueError(f"{source}: holds family {family!r}, expected {cls.family!r}")
        rest = {k: v for k, v in arrays.items() if k != "family"}
        try:
            return target._from_arrays(rest)
        except KeyError as exc:
            raise ValueError(f"{source}: missing entry {exc} for family {family!r}") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"
