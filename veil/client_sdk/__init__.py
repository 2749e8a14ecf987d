"""Veil's phone-side SDK: private user distributions, on-device learning, the privacy-policy guard,
Oblivious HTTP (``veil.client_sdk.ohttp``), ONNX graphs (``veil.client_sdk.runtime``) and the reference
client (``veil.client_sdk.client.VeilClient``; the wire protocol is ``PROTOCOL.md`` beside this file).

Only numpy, cryptography, httpx and onnxruntime may be imported here: this package ships to phones and
must never pull in torch, transformers or scipy. The client and transports are imported from their
modules, so importing this package stays cheap.
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
