"""The fleet's synthetic population: every phone's private examples, from the fleet's settings alone.

The same settings give the same phones on every machine, so a SuperNode far from the ServerApp writes
its own cell's data (:func:`ensure_phones`) and the ServerApp, which never sees a phone's examples,
knows only the labels (:func:`fleet_population`'s first value).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["POPULATION_FIELDS", "ensure_phones", "fleet_population", "phone_dir", "write_phone"]

POPULATION_FIELDS = (
    "phones", "task", "types", "train_per_phone", "test_per_phone", "seed", "skew", "late_join",
)  # fmt: skip
"""The :class:`~veil.simulation.fleet.config.FleetConfig` fields that fix the population."""

PhoneData = tuple[list[tuple[str, str]], list[tuple[str, str]], int]
"""A phone's ``(train, test, join_round)``."""


def phone_dir(work_dir: Path, pid: int) -> Path:
    return Path(work_dir) / "phones" / f"{pid:06d}"


def fleet_population(spec: Mapping[str, Any]) -> tuple[list[str], list[PhoneData]]:
    """``(labels, phones)`` for the :data:`POPULATION_FIELDS` in ``spec``: phone ``p`` is the
    population's ``p``-th user with a log-normal share of ``train_per_phone`` examples (``skew``), joining
    in round 2 with probability ``late_join``."""
    from veil.simulation.data.synthetic import PopulationConfig, make_population

    phones, train_per_phone = int(spec["phones"]), int(spec["train_per_phone"])
    skew, seed = float(spec["skew"]), int(spec["seed"])
    rng = np.random.default_rng(seed + 11)
    factor = np.exp(rng.normal(0.0, skew, phones)) if skew else np.ones(phones)
    amounts = np.clip(np.round(train_per_phone * factor), 1, 4 * train_per_phone).astype(int)
    pop = make_population(
        PopulationConfig(
            task=str(spec["task"]),  # type: ignore[arg-type]
            n_users=phones,
            train_per_user=int(amounts.max()),
            test_per_user=int(spec["test_per_phone"]),
            n_types=int(spec["types"]),
            seed=seed,
        )
    )
    train: dict[str, list[tuple[str, str]]] = {u: [] for u in pop.users}
    test: dict[str, list[tuple[str, str]]] = {u: [] for u in pop.users}
    for ex in pop.train:
        train[ex.user].append((ex.text, ex.label))
    for ex in pop.test:
        test[ex.user].append((ex.text, ex.label))
    late = rng.random(phones) < float(spec["late_join"])
    data = [
        (train[user][: amounts[pid]], test[user], 2 if late[pid] else 1) for pid, user in enumerate(pop.users)
    ]
    return list(pop.labels), data


def write_phone(work_dir: Path, pid: int, data: PhoneData) -> None:
    """Put a phone's private data on its disk (the simulator's set-up)."""
    train, test, join_round = data
    folder = phone_dir(work_dir, pid)
    folder.mkdir(parents=True, exist_ok=True)
    body = {"train": train, "test": test, "join_round": join_round}
    part = folder / "examples.json.part"
    part.write_text(json.dumps(body))
    part.replace(folder / "examples.json")  # a phone has all its data or none


def ensure_phones(work_dir: Path, pids: Sequence[int], spec: Mapping[str, Any]) -> int:
    """Write the data of the phones among ``pids`` that have none yet under ``work_dir``; returns how
    many were written (a SuperNode's first message of a deployed fleet writes its cell)."""
    missing = [pid for pid in pids if not (phone_dir(work_dir, pid) / "examples.json").exists()]
    if missing:
        _, data = fleet_population(spec)
        for pid in missing:
            write_phone(work_dir, pid, data[pid])
    return len(missing)
