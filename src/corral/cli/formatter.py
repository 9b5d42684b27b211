"""The CLI's help formatter, apart from :mod:`corral.cli.common`: only the commands whose
parser is built import ``argparse`` (see :data:`corral.cli.main.LEAN`)."""

from __future__ import annotations

import argparse


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Fixed width: the default formatter imports shutil to size the terminal, even when no
    help is printed."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)
