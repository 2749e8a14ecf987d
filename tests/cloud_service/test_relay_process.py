"""``RelayProcess`` (the relay child of ``veil demo`` and ``veil simulate``) dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

_PARENT = """
import sys, time
from veil.cloud_service.background import RelayProcess
with RelayProcess("http://127.0.0.1:9") as relay:
    print(relay.proc.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's prctl")
def test_a_killed_parent_leaves_no_relay_running() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        os.kill(child, 0)  # the relay runs
        parent.send_signal(signal.SIGKILL)  # no clean-up code runs in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(child, signal.SIGKILL)
        pytest.fail(f"relay {child} still ran 10 s after its parent was killed")
    finally:
        parent.kill()
