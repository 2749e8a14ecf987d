"""Simulated phones in one round: the SDK's :class:`~veil.client_sdk.client.VeilClient`, nothing else.

A phone owns a folder (its "disk"): ``examples.json`` (its private data, written once by the
simulator), ``params.npz`` (the SDK's parameter file) and ``uploads.txt`` (the ids the cloud gave its
uploads: the simulator's ground truth for the audit, never sent anywhere). Everything it sends goes
through the OHTTP relay.

A Flower SuperNode hosts a *cell* of phones (:func:`cell`: the phones ``p, p + nodes, p + 2 nodes, ...``
of node ``p``), ``phone_concurrency`` of them at a time. The cell's phones share one HTTP connection pool
to the relay and one fetched key configuration (what a device farm behind one network would share); each
phone still has its own ``VeilClient``, folder, random stream and a fresh HPKE context per request. What a
cell returns to Flower is summed over its phones (counts, and the one-hot of each choice), so the server
sees cell totals, never a phone's answer.

Retirement passes (the server retires a prototype, publishes a new version and asks again) cost a
phone nothing when its prototype survived: the order announces the new usable flags with the version,
and a phone whose stored prototypes with those flags hash to that version (so only flags changed) and
whose prototype is still usable counts the same choice without a request (:meth:`_Phone.kept_choice`).
The announcement is never what a phone uploads against: before its first upload of a round, a phone
whose stored version is not the round's fetches the codebook through the relay (anonymously, so the
cloud cannot hand one phone a codebook of its own) and the SDK keeps or remakes its choice against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from veil.client_sdk.client import CodebookMismatchError, RetryPolicy, VeilClient
from veil.client_sdk.distributions import Codebook, PrototypeDistribution
from veil.client_sdk.ohttp import AsyncOHTTPClient
from veil.client_sdk.param_store import ParamStore, ParamStoreError
from veil.simulation.fleet.population import phone_dir

__all__ = [
    "PhoneDropoutError",
    "PhoneFailedError",
    "PhoneStoppedError",
    "attribution",
    "cell",
    "cell_average",
    "choose",
    "take_part",
    "train_prototypes",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class PhoneStoppedError(RuntimeError):
    """The simulated phone stopped mid-round after ``uploads`` uploads with prototype ``index`` (they
    are stored, and count in the round's ground truth)."""

    def __init__(self, message: str, index: int, uploads: int) -> None:
        super().__init__(message)
        self.index, self.uploads = index, uploads


class PhoneDropoutError(PhoneStoppedError):
    """The simulated phone left mid-round (after its uploads, before it reported)."""


class PhoneFailedError(PhoneStoppedError):
    """A request of the phone failed mid-round (its cause is chained)."""


def cell(node: int, nodes: int, phones: int) -> range:
    """The phones SuperNode ``node`` (its ``partition-id``, of ``nodes``) hosts: every ``nodes``-th."""
    if not 0 <= node < nodes:
        raise ValueError(f"partition-id {node} is outside [0, {nodes})")
    return range(node, phones, nodes)


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
    def __init__(self, work_dir: Path, pid: int, order: Mapping[str, Any], transport: Any) -> None:
        self.pid = pid
        self.folder = phone_dir(work_dir, pid)
        self.data = json.loads((self.folder / "examples.json").read_text())
        self.order = order
        self.rng = np.random.default_rng([int(order["seed"]), int(order["round"]), pid])
        self.store = ParamStore(self.folder / "params.npz")
        latency = float(order.get("latency_ms", 0.0)) / 1000.0
        self.client = VeilClient(
            _Delayed(transport, latency) if latency > 0 else transport,
            self.store,
            model=str(order["model"]),
            family="prototype",
            rng=lambda: self.rng,
            retry=RetryPolicy(retries=3, backoff_s=0.05),
        )

    @property
    def joined(self) -> bool:
        return int(self.order["round"]) >= int(self.data["join_round"])

    def stored(self) -> PrototypeDistribution | None:
        """The stored choice for this round's model (``None``: missing, corrupt or for another model)."""
        if not self.store.exists():
            return None
        try:
            state = self.store.load("prototype")
        except ParamStoreError:  # a corrupt or foreign file: choose again, as the SDK would after its error
            return None
        return cast(PrototypeDistribution, state.distribution) if state.model == self.order["model"] else None

    def kept_choice(self) -> int | None:
        """The stored index when it counts for the announced codebook without a request: it was made
        against that version, or against the same prototypes with other flags (the announced flags and
        ``k_min`` hash to the announced version) and its prototype is still usable. One file read."""
        dist = self.stored()
        if dist is None:
            return None
        version = str(self.order["codebook_version"])
        if dist.codebook.version == version:
            return dist.index
        active = np.asarray(self.order["codebook_active"], dtype=bool)
        if active.shape != dist.codebook.active.shape or not active[dist.index]:
            return None
        announced = Codebook(dist.codebook.prototypes, active, int(self.order["codebook_k_min"]))
        return dist.index if announced.version == version else None

    def examples(self, n: int | None = None) -> list[tuple[str, str, str]]:
        task = str(self.order["task"])
        return [(task, text, label) for text, label in self.data["train"][:n]]


def _transport(order: Mapping[str, Any]) -> AsyncOHTTPClient:
    return AsyncOHTTPClient(
        str(order["relay_url"]),
        key_config_url=str(order["key_config_url"]),
        timeout=120,
        retries=0,  # VeilClient is the one layer that retries
        gateway_public_key=str(order["gateway_key"]),  # base64, as the app ships it
    )


async def _each(
    work_dir: Path,
    pids: Sequence[int],
    order: Mapping[str, Any],
    step: Callable[[_Phone], Awaitable[T]],
) -> list[T | BaseException]:
    """``step`` for every phone of the cell, ``phone_concurrency`` at a time over one transport; a
    phone's exception is its result (the others go on)."""
    slots = asyncio.Semaphore(int(order.get("phone_concurrency", 1)))
    async with _transport(order) as transport:

        async def one(pid: int) -> T:
            async with slots:
                return await step(_Phone(work_dir, pid, order, transport))

        return await asyncio.gather(*[one(pid) for pid in pids], return_exceptions=True)


async def _choose_one(phone: _Phone) -> int | None:
    """The phone's index after checking (or making) its choice; ``None`` before it joins. Raises
    :class:`RuntimeError` naming the phone when it cannot choose."""
    if not phone.joined:
        return None
    index = phone.kept_choice()
    return index if index is not None else await _choose_through_relay(phone)


async def _choose_through_relay(phone: _Phone) -> int:
    """The SDK's choice against the codebook fetched through the relay: the stored one when only
    retirements that spared it happened since (no loss request), else scored anew."""
    order = phone.order
    examples = phone.examples(int(order["choice_examples"]))
    try:
        choice = await phone.client.choose_prototype(examples, noise_std=float(order["noise_std"]))
    except CodebookMismatchError:  # the codebook moved between its fetch and the losses
        choice = await phone.client.choose_prototype(examples, noise_std=float(order["noise_std"]))
    return choice.index


async def _take_part_one(phone: _Phone) -> dict[str, int]:
    if not phone.joined:
        return {"not-joined": 1}
    order = phone.order
    task, labels = str(order["task"]), list(order["labels"])
    stored = phone.stored()
    if stored is None or stored.codebook.version != str(order["codebook_version"]):
        index = await _choose_through_relay(phone)  # kept through retirements: sync the codebook first
    else:
        index = stored.index
    uploaded: list[str] = []
    try:
        for text, label in phone.data["train"]:
            answer = await phone.client.upload(task, text, label)
            uploaded.append(str(answer["id"]))
    except Exception as exc:
        raise PhoneFailedError(
            f"phone {phone.pid} failed after {len(uploaded)} uploads: {exc!r}", index, len(uploaded)
        ) from exc
    finally:
        with open(phone.folder / "uploads.txt", "a") as fh:  # the simulator's ground truth, kept locally
            fh.write("".join(f"{int(order['round'])} {i}\n" for i in uploaded))
    if phone.rng.random() < float(order.get("dropout", 0.0)):
        raise PhoneDropoutError(
            f"phone {phone.pid} left round {order['round']} after {len(uploaded)} uploads",
            index,
            len(uploaded),
        )
    correct = 0
    for text, label in phone.data["test"]:
        correct += int(await phone.client.predict(task, text, labels) == label)
    return {
        "took-part": 1,
        "num-examples": len(phone.data["test"]),
        "correct": correct,
        "uploads": len(uploaded),
        "index": index,
    }


async def _train_one(phone: _Phone, prototypes: np.ndarray) -> tuple[int, np.ndarray, int] | None:
    """``(row, the row after one local step, examples used)``, or ``None`` for a phone without a choice."""
    if not phone.joined or not phone.store.exists():
        return None
    order = phone.order
    index = phone.store.load("prototype").distribution.index  # type: ignore[attr-defined]
    task = str(order["task"])
    row = prototypes[index].astype(np.float64)
    examples = phone.data["train"][: int(order["fed_examples"])]
    grads = [
        (await phone.client.api.embedding_gradient(task, text, label, row))[1] for text, label in examples
    ]
    step = float(order["fed_lr"]) * float(order["fed_delta_scale"]) * np.mean(grads, axis=0)
    return index, row - step, len(examples)


def _raise_first(results: Sequence[Any], pids: Sequence[int], what: str) -> None:
    for pid, result in zip(pids, results, strict=True):
        if isinstance(result, BaseException):
            raise RuntimeError(f"phone {pid} could not {what}: {result!r}") from result


def choose(work_dir: Path, pids: Sequence[int], order: Mapping[str, Any]) -> dict[str, Any]:
    """The cell's private choices against the published codebook (each again only if it went stale):
    ``{"joined", "choice"}`` with ``choice`` the per-prototype count over the cell's phones. A phone that
    cannot choose fails the cell (:class:`RuntimeError` naming it): its uploads would carry no prototype."""
    results = asyncio.run(_each(work_dir, pids, order, _choose_one))
    _raise_first(results, pids, "choose")
    counts = np.zeros(int(order["codebook_size"]), dtype=np.int64)
    joined = 0
    for index in results:
        if index is not None:
            counts[cast(int, index)] += 1
            joined += 1
    return {"joined": joined, "choice": counts.tolist()}


def take_part(work_dir: Path, pids: Sequence[int], order: Mapping[str, Any]) -> dict[str, Any]:
    """Every phone of the cell uploads its training examples anonymously, then evaluates on its held-out
    ones; returns the cell's sums: phones that ``took-part``, were ``not-joined``, ``dropped`` (left
    between uploads and evaluation) or ``failed`` (raised; logged here), ``num-examples`` and ``correct``
    of the phones that took part, ``uploads`` of every phone (those of phones that dropped out or failed are stored too), and
    ``group-max``: per prototype, the most uploads one phone of the cell made with it this round (the
    simulator's ground truth for :func:`attribution`, kept on the phones until then)."""
    results = asyncio.run(_each(work_dir, pids, order, _take_part_one))
    keys = ("took-part", "not-joined", "dropped", "failed", "num-examples", "correct", "uploads")
    total: dict[str, Any] = dict.fromkeys(keys, 0)
    group_max = np.zeros(int(order["codebook_size"]), dtype=np.int64)
    for pid, result in zip(pids, results, strict=True):
        if isinstance(result, PhoneStoppedError):  # its uploads are stored: they count
            total["uploads"] += result.uploads
            group_max[result.index] = max(group_max[result.index], result.uploads)
        if isinstance(result, PhoneDropoutError):
            total["dropped"] += 1
        elif isinstance(result, BaseException):
            log.error("phone %d failed in round %s: %r", pid, order["round"], result)
            total["failed"] += 1
        else:
            counts = dict(cast(dict[str, int], result))
            index = counts.pop("index", None)
            for key, value in counts.items():
                total[key] += value
            if index is not None:
                group_max[index] = max(group_max[index], counts["uploads"])
    total["group-max"] = group_max.tolist()
    return total


def attribution(group_max: np.ndarray, uploads: int) -> float:
    """Exact single-upload Bayes attribution of a round's uploads to phones, from the per-prototype
    maximum of any one phone's uploads (``group_max``, the element-wise maximum over cells) and the
    round's uploads: a group's phones share one law and groups do not overlap, so the Bayes attributor
    of one upload names the group's busiest phone, right ``sum_g max_{i in g} n_i / sum_i n_i`` of the
    time. NaN without uploads."""
    return float(np.sum(group_max) / uploads) if uploads else math.nan


def train_prototypes(
    work_dir: Path, pids: Sequence[int], order: Mapping[str, Any], prototypes: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """One local step per phone on its own prototype row, averaged over the cell.

    Each phone takes the global table and moves its own row by the gradient of its examples' loss at
    the row (loss requests through the relay: ``/v1/embedding-gradients`` with the public row as the
    embedding); the cell returns the example-weighted mean of its phones' tables, so FedAvg's weighted
    mean over cells is the weighted mean over phones. The step is scaled by ``fed_delta_scale`` because
    FedAvg averages whole tables, so each row's update is diluted by the share of phones in its group.
    """
    results = asyncio.run(_each(work_dir, pids, order, lambda phone: _train_one(phone, prototypes)))
    _raise_first(results, pids, "train")
    trained = [cast(tuple[int, np.ndarray, int], r) for r in results if r is not None]
    return cell_average(prototypes, trained), {
        "num-examples": sum(n for _, _, n in trained),
        "joined": len(trained),
    }


def cell_average(prototypes: np.ndarray, moves: Sequence[tuple[int, np.ndarray, int]]) -> np.ndarray:
    """The example-weighted mean of the phones' tables, each the global ``prototypes`` with one row
    replaced (``(row index, new row, examples)`` per phone); ``prototypes`` when no phone trained."""
    weight = sum(n for _, _, n in moves)
    if not weight:
        return prototypes
    moved = prototypes.astype(
        np.float64
    )  # sum_i n_i * table_i / sum_i n_i, with table_i = prototypes but row
    for index, row, n in moves:
        moved[index] += (n / weight) * (row - prototypes[index])
    return moved.astype(prototypes.dtype)
