"""Progress on stderr for long work (image builds, uploads, downloads): a bar on a terminal,
a few plain lines in a log. Standard library only."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class ProgressBar:
    """A one-line progress bar on stderr. When stderr is not a terminal (a log), plain lines
    instead: one when the step changes, at most one every ``interval`` seconds (the latest
    step then), and the last step always before the closing line."""

    def __init__(self, title: str, width: int = 30, interval: float = 5.0,
                 stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.title = title
        self.width = width
        self.interval = interval
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.clock = clock
        self.started = clock()
        self._printed = ""  # the step of the last line written (not a terminal)
        self._printed_at: float | None = None
        self._latest: tuple[str, float] | None = None

    def __call__(self, step: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            filled = int(self.width * fraction)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.title} [{bar}] {fraction * 100:3.0f}% {step[:40]:<40}")
            self.stream.flush()
            return
        self._latest = (step, fraction)
        now = self.clock()
        if step != self._printed and (self._printed_at is None
                                      or now - self._printed_at >= self.interval):
            self._line(step, fraction, now)

    def _line(self, step: str, fraction: float, now: float) -> None:
        self.stream.write(f"{self.title}: {fraction * 100:3.0f}% {step}\n")
        self.stream.flush()
        self._printed, self._printed_at = step, now

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
        elif self._latest is not None and self._latest[0] != self._printed:
            self._line(*self._latest, self.clock())
        self.stream.write(f"{self.title}: done in {self.clock() - self.started:.1f} s\n")
