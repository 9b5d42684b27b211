"""``corral image build|list`` run in the CLI process (files only; no daemon needed);
``corral image import`` sends the file to the daemon."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from corral.config import Paths


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


def build(args: argparse.Namespace) -> int:
    from corral.images.arm64 import build_tiny_arm64
    from corral.images.debian import build_debian
    from corral.images.tiny import build_tiny

    builders = {"tiny": build_tiny, "tiny-arm64": build_tiny_arm64, "debian": build_debian}
    build_image = builders[args.name]
    root = Path(args.dest) if args.dest else Paths.from_env().images
    dest = root / args.name
    existed = (dest / "image.json").is_file() and not args.force
    bar = ProgressBar(f"building image {args.name}")
    path = build_image(dest, force=args.force, progress=None if existed else bar)
    if not existed:
        bar.done()
    manifest = json.loads((path / "image.json").read_text())
    if args.json:
        print(json.dumps({"path": str(path), **manifest}, indent=2))
    else:
        print(f"image {args.name} {'is already built' if existed else 'built'} at {path}")
    return 0


def import_(args: argparse.Namespace) -> int:
    from corral.cli.common import client, transfer_progress

    image = client(args, timeout=None).import_image(
        args.name, args.file, agent=args.agent, root_device=args.root_device,
        progress=transfer_progress(f"uploading image {args.name}"))
    if args.json:
        print(json.dumps(image, indent=2))
    else:
        print(f"image {args.name} imported at {image['path']}")
    return 0


def list_images(args: argparse.Namespace) -> int:
    from corral.images.catalog import list_images as _list

    images = _list(Paths.from_env())
    rows = [{"name": i.name, "arch": i.arch, "path": str(i.dir),
             "built_at": i.manifest.get("built_at")} for i in images]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<16} {r['arch']:<8} {r['path']}")
    return 0
