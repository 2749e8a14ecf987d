"""One simulated phone in one round: the SDK's :class:`~veil.client_sdk.client.VeilClient`, nothing else.

A phone owns a folder (its "disk"): ``examples.json`` (its private data, written once by the
simulator), ``params.npz`` (the SDK's parameter file) and ``uploads.txt`` (the ids the cloud gave its
uploads: the simulator's ground truth for the audit, never sent anywhere). Everything it sends goes
through the OHTTP relay; what it returns to Flower is aggregated by the server (counts and sums).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from veil.client_sdk.client import CodebookMismatchError, RetryPolicy, VeilClient
from veil.client_sdk.distributions import PrototypeDistribution
from veil.client_sdk.ohttp import AsyncOHTTPClient
from veil.client_sdk.param_store import ParamStore, ParamStoreError

__all__ = ["PhoneDropoutError", "choose", "phone_dir", "take_part", "train_prototypes", "write_phone"]


class PhoneDropoutError(RuntimeError):
    """The simulated phone left mid-round (after its uploads, before it reported)."""


def phone_dir(work_dir: Path, pid: int) -> Path:
    return Path(work_dir) / "phones" / f"{pid:06d}"


def write_phone(
    work_dir: Path, pid: int, train: list[tuple[str, str]], test: list[tuple[str, str]], join_round: int
) -> None:
    """Put a phone's private data on its disk (the simulator's set-up)."""
    folder = phone_dir(work_dir, pid)
    folder.mkdir(parents=True, exist_ok=True)
    body = {"train": train, "test": test, "join_round": join_round}
    (folder / "examples.json").write_text(json.dumps(body))


class _Delayed:
    """A transport that waits ``latency_s`` before and after each exchange (a slow mobile link)."""

    def __init__(self, transport: Any, latency_s: float) -> None:
        self.transport, self.latency_s = transport, latency_s

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        await asyncio.sleep(self.latency_s)
        try:
            return await self.transport.request(method, path, **kwargs)
        finally:
            await asyncio.sleep(self.latency_s)


class _Phone:
    def __init__(self, work_dir: Path, pid: int, order: Mapping[str, Any]) -> None:
        self.folder = phone_dir(work_dir, pid)
        self.data = json.loads((self.folder / "examples.json").read_text())
        self.order = order
        self.rng = np.random.default_rng([int(order["seed"]), int(order["round"]), pid])
        self.store = ParamStore(self.folder / "params.npz")

    def client(self, transport: Any) -> VeilClient:
        latency = float(self.order.get("latency_ms", 0.0)) / 1000.0
        return VeilClient(
            _Delayed(transport, latency) if latency > 0 else transport,
            self.store,
            model=str(self.order["model"]),
            family="prototype",
            rng=lambda: self.rng,
            retry=RetryPolicy(retries=3, backoff_s=0.05),
        )

    def transport(self) -> AsyncOHTTPClient:
        return AsyncOHTTPClient(
            str(self.order["relay_url"]),
            key_config_url=str(self.order["key_config_url"]),
            timeout=120,
            retries=0,  # VeilClient is the one layer that retries
            gateway_public_key=bytes.fromhex(str(self.order["gateway_key"])),
        )

    def current_choice(self) -> int | None:
        """The stored prototype index when it is for this round's model and codebook version, else
        ``None`` (missing, corrupt or stale: choose again). One file read, no request."""
        if not self.store.exists():
            return None
        try:
            state = self.store.load("prototype")
        except ParamStoreError:  # a corrupt or foreign file: choose again, as the SDK would after its error
            return None
        dist = cast(PrototypeDistribution, state.distribution)
        if state.model != self.order["model"] or dist.codebook.version != str(self.order["codebook_version"]):
            return None
        return dist.index


async def _choose(work_dir: Path, pid: int, order: Mapping[str, Any]) -> dict[str, Any]:
    phone = _Phone(work_dir, pid, order)
    k = int(order["codebook_size"])
    if int(order["round"]) < int(phone.data["join_round"]):
        return {"joined": 0, "chose": 0, "choice": [0] * k}
    index = phone.current_choice()
    chose = index is None
    if index is None:
        task = str(order["task"])
        examples = [
            (task, text, label) for text, label in phone.data["train"][: int(order["choice_examples"])]
        ]
        async with phone.transport() as transport:
            client = phone.client(transport)
            try:
                choice = await client.choose_prototype(examples, noise_std=float(order["noise_std"]))
            except CodebookMismatchError:  # the codebook moved between its fetch and the losses
                choice = await client.choose_prototype(examples, noise_std=float(order["noise_std"]))
        index = choice.index
    one_hot = [0] * k
    one_hot[index] = 1
    return {"joined": 1, "chose": int(chose), "choice": one_hot}


async def _take_part(work_dir: Path, pid: int, order: Mapping[str, Any]) -> dict[str, Any]:
    phone = _Phone(work_dir, pid, order)
    if int(order["round"]) < int(phone.data["join_round"]):
        return {"joined": 0, "num-examples": 0, "correct": 0, "uploads": 0}
    task, labels = str(order["task"]), list(order["labels"])
    uploaded: list[str] = []
    async with phone.transport() as transport:
        client = phone.client(transport)
        for text, label in phone.data["train"]:
            answer = await client.upload(task, text, label)
            uploaded.append(str(answer["id"]))
        with open(phone.folder / "uploads.txt", "a") as fh:  # the simulator's ground truth, kept locally
            fh.write("".join(f"{int(order['round'])} {i}\n" for i in uploaded))
        if phone.rng.random() < float(order.get("dropout", 0.0)):
            raise PhoneDropoutError(f"phone {pid} left round {order['round']} after {len(uploaded)} uploads")
        correct = 0
        for text, label in phone.data["test"]:
            correct += int(await client.predict(task, text, labels) == label)
    return {
        "joined": 1,
        "num-examples": len(phone.data["test"]),
        "correct": correct,
        "uploads": len(uploaded),
    }


async def _train_prototypes(
    work_dir: Path, pid: int, order: Mapping[str, Any], prototypes: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    phone = _Phone(work_dir, pid, order)
    if int(order["round"]) < int(phone.data["join_round"]) or not phone.store.exists():
        return prototypes, {"num-examples": 0, "joined": 0}
    index = phone.store.load("prototype").distribution.index  # type: ignore[attr-defined]
    task = str(order["task"])
    row = prototypes[index].astype(np.float64)
    examples = phone.data["train"][: int(order["fed_examples"])]
    async with phone.transport() as transport:
        client = phone.client(transport)
        grads = [(await client.api.embedding_gradient(task, text, label, row))[1] for text, label in examples]
    step = float(order["fed_lr"]) * float(order["fed_delta_scale"]) * np.mean(grads, axis=0)
    out = prototypes.copy()
    out[index] = (row - step).astype(prototypes.dtype)
    return out, {"num-examples": len(examples), "joined": 1}


def train_prototypes(
    work_dir: Path, pid: int, order: Mapping[str, Any], prototypes: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """One local step on the phone's own prototype row (the global prototypes in, the table with that
    row moved out): the gradient of its examples' loss at the row, from loss requests through the relay
    (``/v1/embedding-gradients`` with the public row as the embedding). The step is scaled by
    ``fed_delta_scale`` because FedAvg averages whole tables, so each row's update is diluted by the
    share of phones in its group."""
    return asyncio.run(_train_prototypes(work_dir, pid, order, prototypes))


def choose(work_dir: Path, pid: int, order: Mapping[str, Any]) -> dict[str, Any]:
    """The phone's private choice against the published codebook (again only if it went stale)."""
    return asyncio.run(_choose(work_dir, pid, order))


def take_part(work_dir: Path, pid: int, order: Mapping[str, Any]) -> dict[str, Any]:
    """Upload every training example anonymously, then evaluate on the held-out ones (a dropout raises
    :class:`PhoneDropoutError` in between)."""
    return asyncio.run(_take_part(work_dir, pid, order))
