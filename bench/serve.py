"""How soon a restarted ``corral serve`` answers, with VMs to re-adopt.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/serve.py [--vms 20] [--restarts 3]
        [--json FILE]

A daemon with its own temporary ``CORRAL_HOME`` makes ``--vms`` live VMs (paused clones in a
warm pool: real QEMU processes, cheap to make), then is stopped (SIGTERM: the VMs keep
running) and started again ``--restarts`` times. Timed from the ``corral serve`` process
start: the first answer of ``GET /v1/vms`` (which waits until every VM is taken up) through
``corral.Client``, polled every 5 ms; beside it, ``python -c pass`` and the daemon's own log
of when its API was loaded and how long the store and the adoption took.

Target (from the issue): answering within 0.5 s with 20 VMs to re-adopt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from corral.client import Client
from corral.errors import CorralError

CORRAL = str(Path(sys.executable).parent / "corral")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--vms", type=int, default=20)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="crv-", dir="/tmp"))
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_SOCKET": str(home / "corral.sock"),
           "CORRAL_CPU_RATIO": "40"}
    logfile = home / "daemon.log"

    def start() -> tuple[subprocess.Popen[bytes], Client, float]:
        t0 = time.monotonic()
        with logfile.open("ab") as out:
            proc = subprocess.Popen([CORRAL, "serve"], env=env, stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL)
        c = Client(home / "corral.sock", timeout=None)
        while True:
            with contextlib.suppress(CorralError, OSError):
                c.list()
                return proc, c, time.monotonic() - t0
            if proc.poll() is not None:
                raise RuntimeError(logfile.read_text()[-2000:])
            time.sleep(0.005)

    proc, c, _ = start()
    answers: list[float] = []
    try:
        c.create("gold", start=True, wait=True)
        c.snapshot_create("gold", "base", memory=True, template=True)
        c.pool_create("p", "gold:base", args.vms - 1)
        while c.pool_show("p")["free"] < args.vms - 1:
            time.sleep(0.2)
        for _ in range(args.restarts):
            c.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            proc, c, took = start()
            answers.append(took)
            assert len(c.list()) == args.vms
    finally:
        with contextlib.suppress(CorralError):
            c.pool_rm("p")
            for vm in c.list():
                c.rm(vm["name"])
        c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        text = logfile.read_text() if logfile.exists() else ""
        shutil.rmtree(home, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    interpreter = time.monotonic() - t0
    loaded = [float(x) for x in re.findall(r"API loaded ([\d.]+) s", text)][-args.restarts:]
    opened = [float(x) for x in re.findall(r"VMs taken up in ([\d.]+) s", text)][-args.restarts:]
    print(f"corral serve with {args.vms} live VMs to re-adopt, {args.restarts} restarts "
          f"(load average {os.getloadavg()[0]:.1f})")
    print(f"  first answer of GET /v1/vms: median {statistics.median(answers):.2f} s "
          f"({', '.join(f'{a:.2f}' for a in answers)})")
    if loaded:
        print(f"  of which the API loaded after {statistics.median(loaded):.2f} s, store and "
              f"adoption took {statistics.median(opened):.2f} s (daemon's log)")
    print(f"  python -c pass: {interpreter:.2f} s")
    ok = statistics.median(answers) <= 0.5
    print(f"  {'PASS' if ok else 'FAIL'}  answering within 0.5 s with {args.vms} VMs: "
          f"{statistics.median(answers):.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"vms": args.vms, "answers": answers,
                                               "api_loaded": loaded, "opened": opened}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
