"""Progress lines on stdout (the driver, every worker, and methods that report what they did)."""

from __future__ import annotations

import sys


def say(line: str) -> None:
    """One progress line on stdout. Not ``print``: Ray Train patches it in workers to also log
    every line through the root logger, which shows each line twice on the driver."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
