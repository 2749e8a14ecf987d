"""Veil's phone-side SDK: private user distributions and on-device learning.

Only numpy (and, in later modules, cryptography, httpx and onnxruntime) may be imported here: this package
ships to phones and must never pull in torch, transformers or scipy.
"""

from __future__ import annotations

from veil.client_sdk.distributions import (
    FAMILIES,
    BasisMixtureDistribution,
    BetaDistribution,
    GaussianDistribution,
    UserDistribution,
    load_distribution,
)
from veil.client_sdk.learning import Adam, OnDeviceLearner

__all__ = [
    "FAMILIES",
    "Adam",
    "BasisMixtureDistribution",
    "BetaDistribution",
    "GaussianDistribution",
    "OnDeviceLearner",
    "UserDistribution",
    "load_distribution",
]
