"""``corral image build|list`` run in the CLI process (files only; no daemon needed);
``corral image import`` sends the file to the daemon."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from corral.cli.progress import ProgressBar
from corral.config import Paths


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
