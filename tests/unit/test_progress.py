"""Progress of image builds and imports: a bar on a terminal, a few lines in a log."""

from __future__ import annotations

import io

from corral.cli.progress import ProgressBar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_line_per_step_at_most_every_few_seconds() -> None:
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar("building image tiny", interval=5, stream=out, clock=clock)
    for i in range(100):  # a step per percent, one every 0.1 s
        clock.now = 100 + i / 10
        bar(f"step {i}%", i / 100)
    bar.done()
    lines = out.getvalue().splitlines()
    assert lines == ["building image tiny:   0% step 0%",
                     "building image tiny:  50% step 50%",
                     "building image tiny:  99% step 99%",  # 4.9 s later: the last, always
                     "building image tiny: done in 9.9 s"]


def test_a_log_skips_nothing_when_steps_are_slow_and_repeats_nothing() -> None:
    out, clock = io.StringIO(), Clock()
    bar = ProgressBar("importing image x", interval=5, stream=out, clock=clock)
    for step in ("fetching", "fetching", "converting", "converting"):
        bar(step, 0.5)
        clock.now += 6
    bar.done()
    assert out.getvalue().splitlines() == ["importing image x:  50% fetching",
                                           "importing image x:  50% converting",
                                           "importing image x: done in 24.0 s"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_redrawn_line() -> None:
    out = Terminal()
    bar = ProgressBar("building image tiny", width=4, stream=out, clock=Clock())
    bar("kernel", 0.5)
    bar("kernel", 1.0)
    bar.done()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.count("\n") == 2
    assert "[####] 100% kernel" in text and text.endswith("done in 0.0 s\n")
