"""Polling with generous timeouts: CI machines may be heavily loaded, and nothing here asserts
timing, so waits poll (up to 120 s by default) instead of sleeping fixed amounts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None], what: str, timeout_s: float = 120.0, every_s: float = 0.5
) -> T:
    """Poll ``probe`` until it returns something truthy; fail the test naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
