"""Find guest images. An image is a directory holding ``image.json`` and the files it names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.config import Paths
from corral.domain.specs import NAME_RE
from corral.errors import InvalidSpec


@dataclass(frozen=True)
class Image:
    name: str
    dir: Path
    manifest: dict[str, Any]

    @property
    def kernel(self) -> Path | None:
        kernel = self.manifest.get("kernel")
        return self.dir / str(kernel) if kernel else None

    @property
    def disk(self) -> Path | None:
        """The root disk new VMs get an overlay of (disk images), or None (RAM root)."""
        disk = self.manifest.get("disk")
        return self.dir / str(disk) if disk else None

    @property
    def root_bus(self) -> str:
        return str(self.manifest.get("root_device", "virtio"))

    @property
    def initrd(self) -> Path | None:
        initrd = self.manifest.get("initrd")
        return self.dir / str(initrd) if initrd else None

    @property
    def cmdline(self) -> str:
        return str(self.manifest.get("cmdline", "console=ttyS0"))

    @property
    def arch(self) -> str:
        return str(self.manifest.get("arch", "x86_64"))

    @property
    def agent(self) -> bool:
        return bool(self.manifest.get("agent", False))


def find(paths: Paths, name: str) -> Image | None:
    """The image ``name`` (None for a name that is no image name: never a path)."""
    if not NAME_RE.match(name):
        return None
    for root in paths.image_path:
        manifest = root / name / "image.json"
        if manifest.is_file():
            return Image(name, manifest.parent, json.loads(manifest.read_text()))
    return None


def resolve(paths: Paths, name: str) -> Image:
    """:raises InvalidSpec: when no image of that name is built."""
    image = find(paths, name)
    if image is None:
        hint = (" build it with 'corral image build tiny'" if name == "tiny"
                else " see 'corral image list'")
        raise InvalidSpec("image", f"no image '{name}';{hint}")
    return image


def list_images(paths: Paths) -> list[Image]:
    seen: dict[str, Image] = {}
    for root in paths.image_path:
        if root.is_dir():
            for manifest in sorted(root.glob("*/image.json")):
                name = manifest.parent.name
                if name not in seen:
                    seen[name] = Image(name, manifest.parent, json.loads(manifest.read_text()))
    return list(seen.values())
