"""Progress bars for long runs: rich on stderr, so ``--json`` output on stdout stays clean."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["Laps", "NullProgress", "Progress", "RichProgress"]


class Progress(Protocol):
    """Something that shows how far a stage has come."""

    def stage(self, description: str, total: int | None) -> StageHandle: ...


class StageHandle(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def update(self, completed: int, total: int | None = None) -> None: ...


class _NullHandle:
    def advance(self, n: int = 1) -> None:
        return None

    def update(self, completed: int, total: int | None = None) -> None:
        return None


class NullProgress:
    """Shows nothing (tests, library use)."""

    @contextmanager
    def stage(self, description: str, total: int | None) -> Iterator[_NullHandle]:
        yield _NullHandle()


class _RichHandle:
    def __init__(self, progress: object, task: object) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)  # type: ignore[attr-defined]

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the position (and the total, when it is only known once the stage runs)."""
        self._progress.update(self._task, completed=completed, total=total)  # type: ignore[attr-defined]


class RichProgress:
    """One rich progress bar per stage, on stderr."""

    def __init__(self) -> None:
        # lazy: rich loads only when a bar is shown (not under --json or in tests)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description:<44}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )

    @contextmanager
    def stage(self, description: str, total: int | None) -> Iterator[_RichHandle]:
        with self._progress:
            task = self._progress.add_task(description, total=total)
            yield _RichHandle(self._progress, task)


class Laps:
    """Wall and CPU seconds of a run's stages, each timed from the end of the one before.

    >>> laps = Laps()
    >>> laps.lap("setup_s"); laps.total(); sorted(laps.seconds)
    ['setup_s', 'total_s']
    """

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._say = say
        self._start = self._clock = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        """Record the stage ``name`` as ending now (and tell ``say`` one line about it)."""
        now = (time.perf_counter(), time.process_time())
        self.seconds[name] = round(now[0] - self._clock[0], 1)
        self.cpu[name] = round(now[1] - self._clock[1], 1)
        self._clock = now
        if self._say is not None:
            self._say(f"  {name}: {self.seconds[name]:.0f} s ({self.cpu[name]:.0f} s CPU)")

    def total(self, name: str = "total_s") -> None:
        """Record the whole run so far as ``name``."""
        now = (time.perf_counter(), time.process_time())
        self.seconds[name] = round(now[0] - self._start[0], 1)
        self.cpu[name] = round(now[1] - self._start[1], 1)
