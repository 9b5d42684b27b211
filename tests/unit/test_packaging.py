"""What `make install` puts on a host: the systemd unit passes `systemd-analyze verify`
(these machines do not boot systemd, but the analyzer runs), and every line of the default
configuration file, uncommented, is a setting the daemon accepts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral import settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"


def test_the_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (make test installs systemd)")
    corral = Path(sys.executable).parent / "corral"
    unit = tmp_path / "corral.service"
    unit.write_text((PACKAGING / "corral.service.in").read_text()
                    .replace("@CORRAL@", str(corral)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True)
    problems = [line for line in res.stderr.splitlines()
                if "corral.service" in line]
    assert res.returncode == 0 and problems == [], res.stderr
    assert "KillMode=process" in unit.read_text()  # VMs outlive the daemon


def test_every_line_of_the_default_file_is_a_setting(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CORRAL_")]:  # they win over a file
        monkeypatch.delenv(name)
    text = (PACKAGING / "corral.toml").read_text()
    uncommented = re.sub(r"(?m)^# (\w+ = .*)$", r"\1", text)
    assert uncommented != text
    path = tmp_path / "corral.toml"
    path.write_text(uncommented)
    settings.reset()
    try:
        settings.load_file(path)
        keys = {r["key"] for r in settings.table() if r["source"].startswith(str(path))}
        assert {"home", "scheduler.cpu_ratio", "log.format", "engine.accel"} <= keys
        path.write_text(text)
        settings.load_file(path)  # as installed: everything commented, all defaults
        assert all(r["source"] == "default" for r in settings.table()
                   if not r["env"] or r["env"] not in ("CORRAL_HOME", "CORRAL_IMAGE_PATH"))
    finally:
        settings.reset()
