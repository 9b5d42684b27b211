"""Files moved through the API (uploads, export downloads) next to the host copying the same
bytes itself, measured side by side in one run.

    .venv/bin/python bench/transfer.py [--mib 256] [--reps 5] [--json FILE]

The daemon never opens a file a client names, so a kernel, an image or an export crosses
the unix socket instead of being read in place. What that costs:

* **upload**: ``Client.upload(path)`` (read by the client, streamed to the daemon, which
  writes it under its home with a SHA-256 and an fsync) against the host's ``cp`` of the
  same file into the same directory followed by an fsync;
* **export download**: ``Client.export(vm, path)`` of a VM whose only data is a raw disk of
  the same size (the daemon hashes every file, then streams the tar; the client writes and
  fsyncs it) against the host copying the VM's files into one file with an fsync.

Both sides use the same filesystem (the daemon's temporary home). Each repetition runs both,
alternating which goes first; one warm-up is discarded. Medians (min-max) in MiB/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import Summary, fmt_summary, ratio, render_table, run_benchmark
from lifecycle import CorralSystem, image_path

from corral.client import Client

CHUNK = 1 << 20


def host_copy(sources: list[Path], target: Path) -> float:
    """Copy ``sources`` one after the other into ``target`` and fsync it: seconds."""
    t0 = time.perf_counter()
    with target.open("wb") as out:
        for src in sources:
            with src.open("rb") as f:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="file size in MiB (default 256)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="crl-bench-xfer-"))
    corral = CorralSystem(home / "home", image_path())
    try:
        corral.start_daemon()
        return measure(corral, home, args)
    finally:
        with contextlib.suppress(Exception):
            corral.client.rm("xfer")
        corral.stop_daemon()
        shutil.rmtree(home, ignore_errors=True)


def measure(corral: CorralSystem, work: Path, args: argparse.Namespace) -> int:
    c, size = corral.client, args.mib << 20
    data = work / "data.raw"
    subprocess.run(["dd", "if=/dev/urandom", f"of={data}", "bs=1M", f"count={args.mib}",
                    "status=none"], check=True)
    c.create("xfer", disks=[{"file": str(data), "format": "raw"}])
    vm_dir = corral.home / "vms" / "xfer"
    vm_files = sorted(p for p in vm_dir.iterdir() if p.is_file())
    exported = sum(p.stat().st_size for p in vm_files)
    times: dict[str, list[float]] = {k: [] for k in ("upload", "cp", "export", "copy")}
    for rep in range(args.reps + 1):
        order = [("upload", "cp"), ("export", "copy")]
        for pair in order:
            for key in (pair if rep % 2 else pair[::-1]):
                seconds = run_one(key, c, data, work, vm_files)
                if rep:  # the first repetition warms up
                    times[key].append(seconds)
    mibs = {k: Summary.of([(size if k in ("upload", "cp") else exported) / (1 << 20) / t
                           for t in v]) for k, v in times.items()}
    print(f"Transfer benchmark: {args.mib} MiB of random data, n={args.reps} after 1 "
          f"warm-up; MiB/s, median (min-max)\n")
    print(render_table(["operation (MiB/s)", "through the API", "host copy", "API/host"], [
        ["upload a file", fmt_summary(mibs["upload"]), fmt_summary(mibs["cp"]),
         ratio(mibs["upload"], mibs["cp"])],
        ["download a VM export", fmt_summary(mibs["export"]), fmt_summary(mibs["copy"]),
         ratio(mibs["export"], mibs["copy"])]]))
    if args.json:
        Path(args.json).write_text(json.dumps({k: s.as_dict() if s else None
                                               for k, s in mibs.items()}, indent=2))
    return 0


def run_one(key: str, c: Client, data: Path, work: Path, vm_files: list[Path]) -> float:
    target = work / f"out-{key}"
    t0 = time.perf_counter()
    if key == "upload":
        up = c.upload(data)["upload"]
        seconds = time.perf_counter() - t0
        c.request("DELETE", f"/uploads/{up}")
        return seconds
    if key == "export":
        c.export("xfer", target)
        seconds = time.perf_counter() - t0
    else:
        seconds = host_copy([data] if key == "cp" else vm_files, target)
    target.unlink()
    return seconds


if __name__ == "__main__":
    run_benchmark(main)
