"""Plain containers for simulated user populations.

A :class:`Population` is what every experiment in ``veil.simulation`` consumes: labelled text examples,
each held by one simulated device, split in time into train and test. The ``user`` key exists only so
the simulator knows which device holds which example; nothing built on it may send it to the cloud.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from veil.client_sdk.constants import TASKS, Task

__all__ = ["TASKS", "DatasetFormatError", "Example", "Population", "Split", "Task"]

Split = Literal["train", "test"]


class DatasetFormatError(ValueError):
    """A dataset file does not follow its documented format.

    The message names the file and the line (text formats) or record (JSON formats) at fault.
    """


@dataclass(frozen=True)
class Example:
    """One labelled text held by one simulated device.

    Attributes
    ----------
    user : str
        The simulator's key for the device that holds the example. It is never sent to the cloud.
    text : str
        The input text; for ``next_word`` the prompt whose next word is predicted.
    label : str
        Classification: a class name. ``next_word``: the target word, without a leading space.
    time : float
        Seconds since the Unix epoch; splits are made in time.
    """

    user: str
    text: str
    label: str
    time: float


@dataclass
class Population:
    """Train and test examples of a set of users, with the label set and provenance.

    Attributes
    ----------
    name : str
        Short name of the data set (``"sentiment140"``, ``"synthetic-classification"``, ...).
    task : {"classification", "next_word"}
        What is predicted from ``Example.text``.
    labels : list of str
        Classification: class names in index order. ``next_word``: the candidate words.
    train, test : list of Example
        The two time-ordered splits; a user may appear in only one of them.
    meta : dict
        Provenance and generator ground truth (for example each user's latent type); must be
        JSON-serialisable.

    Raises
    ------
    ValueError
        On an unknown task, duplicate or empty labels, an example whose label is not in ``labels``,
        a population without examples, or a ``meta`` that JSON cannot encode.
    """

    name: str
    task: Task
    labels: list[str]
    train: list[Example]
    test: list[Example]
    meta: dict[str, Any] = field(default_factory=dict)
    _index: dict[str, int] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.labels:
            raise ValueError(f"population {self.name!r} has no labels")
        self._index = {label: i for i, label in enumerate(self.labels)}
        if len(self._index) != len(self.labels):
            dupes = sorted(label for label, n in Counter(self.labels).items() if n > 1)
            raise ValueError(f"labels must be unique, got duplicates {dupes}")
        if not self.train and not self.test:
            raise ValueError(f"population {self.name!r} is empty: no train and no test examples")
        for split in ("train", "test"):
            for i, example in enumerate(getattr(self, split)):
                if example.label not in self._index:
                    raise ValueError(
                        f"{split}[{i}] of population {self.name!r} has label {example.label!r}, "
                        f"which is not in labels ({len(self.labels)} labels)"
                    )
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta of population {self.name!r} must be JSON-serialisable: {err}") from err

    @property
    def users(self) -> list[str]:
        """Sorted users that hold at least one train or test example."""
        return sorted({e.user for e in self.train} | {e.user for e in self.test})

    def by_user(self, split: Split) -> dict[str, list[Example]]:
        """Examples of one split grouped by user (users sorted, examples in split order).

        Raises
        ------
        ValueError
            If ``split`` is not ``"train"`` or ``"test"``.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        groups: dict[str, list[Example]] = {}
        for example in getattr(self, split):
            groups.setdefault(example.user, []).append(example)
        return {user: groups[user] for user in sorted(groups)}

    def label_index(self, label: str) -> int:
        """Position of ``label`` in ``labels``; raises ``ValueError`` for an unknown label."""
        try:
            return self._index[label]
        except KeyError:
            raise ValueError(f"unknown label {label!r} for population {self.name!r}") from None

    def subset(self, users: Sequence[str]) -> Population:
        """A population with only the examples of ``users``; labels and a copy of meta are kept.

        Raises
        ------
        ValueError
            If a user is not in this population, or no user is given.
        """
        wanted = set(users)
        unknown = sorted(wanted - set(self.users))
        if unknown:
            raise ValueError(f"users not in population {self.name!r}: {unknown[:5]} ({len(unknown)} in all)")
        meta = copy.deepcopy(self.meta)
        meta["subset_of"] = {"name": self.name, "n_users": len(self.users)}
        return Population(
            name=self.name,
            task=self.task,
            labels=list(self.labels),
            train=[e for e in self.train if e.user in wanted],
            test=[e for e in self.test if e.user in wanted],
            meta=meta,
        )

    def summary(self) -> dict[str, Any]:
        """Counts per split: examples, users and label distribution (JSON-serialisable)."""

        def split_summary(examples: list[Example]) -> dict[str, Any]:
            counts = Counter(e.label for e in examples)
            return {
                "examples": len(examples),
                "users": len({e.user for e in examples}),
                "labels": {label: counts[label] for label in self.labels if counts[label]},
            }

        return {
            "name": self.name,
            "task": self.task,
            "users": len(self.users),
            "labels": len(self.labels),
            "train": split_summary(self.train),
            "test": split_summary(self.test),
        }
