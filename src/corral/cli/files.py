"""``corral cp``: files between the host and a guest."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from corral.cli.common import transfer_progress
from corral.errors import InvalidSpec


def _split(spec: str) -> tuple[str | None, str]:
    vm, sep, path = spec.partition(":")
    if sep and vm and "/" not in vm:
        return vm, path
    return None, spec


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def copy(client: Any, src: str, dest: str, as_json: bool) -> int:
    """:raises InvalidSpec: when neither or both sides name a VM, or a local path is wrong."""
    src_vm, src_path = _split(src)
    dest_vm, dest_path = _split(dest)
    if (src_vm is None) == (dest_vm is None):
        raise InvalidSpec("cp", "name exactly one side as VM:/path, e.g. "
                                "corral cp file.txt web:/tmp/file.txt")
    if dest_vm is not None:
        local = Path(src_path)
        if not local.is_file():
            raise InvalidSpec("cp", f"no file '{src_path}' on this host")
        if dest_path.endswith("/"):
            dest_path += local.name
        try:  # with the caller's own rights, streamed as an upload: the daemon never opens it
            source = local.open("rb")
        except OSError as err:
            raise InvalidSpec("cp", f"cannot read {src_path}: {err.strerror}") from err
        with source:
            out = client.copy_in(dest_vm, dest_path, source,
                                 transfer_progress(f"copying {local.name}"))
    else:
        assert src_vm is not None
        data = client.read_file(src_vm, src_path)
        target = Path(dest_path)
        if target.is_dir():
            target = target / Path(src_path).name
        if not target.parent.is_dir():
            raise InvalidSpec("cp", f"no directory '{target.parent}' on this host")
        # write beside the target, then rename: never a half-written file under its name
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as err:
            raise InvalidSpec("cp", f"cannot write in {target.parent}: {err.strerror}") from err
        try:
            # the mode cp gives: the file's own when it is replaced, else 0666 less the umask
            # (mkstemp makes it 0600: nobody else could read a file copied out)
            os.fchmod(fd, _mode_for(target))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        import hashlib

        out = {"path": str(target), "size": len(data),
               "sha256": hashlib.sha256(data).hexdigest()}
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        print(f"copied {out['size']} bytes (sha256 {out['sha256'][:16]}…)")
    return 0
