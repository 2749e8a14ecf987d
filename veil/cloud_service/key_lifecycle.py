"""Gateway keys on a schedule: rotate when the current key is old, retire after a grace period.

Every API process runs :meth:`KeyLifecycle.run` as a background task; each pass (:meth:`KeyLifecycle.tick`)

1. re-reads the keys (another worker, or ``veil gateway rotate``, may have changed them);
2. makes a new current key when the current one is ``rotation_s`` old. Workers race safely: each
   proposes epoch ``max + 1`` as seen when it decided, the store's primary key lets one insert win, and
   the others adopt that key, so one rotation happens however many workers tick at once;
3. retires keys rotated out ``grace_period_s`` ago (the key ring's setting): the record goes, a
   tombstone stays;
4. drops the replay digests of retired keys (:meth:`veil.cloud_service.replay.ReplayStore.forget`), in
   short transactions, so the replay store holds at most the traffic of the live keys.

RFC 9458 section 3 lets a gateway publish several keys; the schedule keeps the current one fresh while
phones that fetched a configuration before a rotation keep working through the grace period.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from veil.cloud_service.keyring import Keyring
from veil.cloud_service.replay import ReplayStore

__all__ = ["KeyLifecycle", "TickReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickReport:
    """What one pass did."""

    rotated_to: int | None
    """Key id of the key this process made, or ``None``."""
    retired: list[int]
    """Key ids this process retired."""
    forgotten: int
    """Replay digests dropped."""


@dataclass
class KeyLifecycle:
    """Rotation and retirement of one gateway's keys.

    Attributes
    ----------
    keyring : Keyring
        The keys; its ``grace_period_s`` and clock set when rotated-out keys retire.
    replays : ReplayStore
        Where the gateway records seen encapsulations.
    rotation_s : float
        Age of the current key that triggers a rotation (default one day).
    check_every_s : float or None
        Seconds between passes in :meth:`run`; ``None``: a tenth of ``rotation_s``, within 0.5-60 s.
    """

    keyring: Keyring
    replays: ReplayStore
    rotation_s: float = 24 * 3600.0
    check_every_s: float | None = None
    _empty_passes: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.rotation_s > 0:
            raise ValueError(f"rotation_s must be > 0, got {self.rotation_s}")
        if self.check_every_s is None:
            self.check_every_s = min(60.0, max(0.5, self.rotation_s / 10))
        if not self.check_every_s > 0:
            raise ValueError(f"check_every_s must be > 0, got {self.check_every_s}")

    def tick(self) -> TickReport:
        """One pass (blocking: database work). Raises what the key ring or the store raise."""
        rotated = self.keyring.rotate_if_due(self.rotation_s)
        retired = self.keyring.retire()
        forgotten = 0
        for epoch in sorted(self.keyring.retired_epochs()):
            if self._empty_passes.get(epoch, 0) >= 2:
                continue
            n = self.replays.forget([epoch])
            forgotten += n
            # Inserts check that the key is live, so once retired no row is added for it, except an
            # insert already under way as it retired: two empty passes in a row settle it for good.
            self._empty_passes[epoch] = self._empty_passes.get(epoch, 0) + 1 if n == 0 else 0
        if rotated is not None or retired or forgotten:
            log.info(
                "gateway keys: rotated to %s, retired %s, dropped %d replay digests",
                rotated.key_id if rotated is not None else "-",
                retired or "none",
                forgotten,
            )
        return TickReport(rotated.key_id if rotated is not None else None, retired, forgotten)

    async def run(self) -> None:
        """Tick every ``check_every_s`` until cancelled; a failing pass is logged and retried."""
        every = self.check_every_s or 60.0
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception as exc:  # a store outage or a refused record must not end the schedule
                detail = str(exc).splitlines()[0] if str(exc) else ""
                log.error("gateway key rotation failed: %s: %s", type(exc).__name__, detail)
            await asyncio.sleep(every)
