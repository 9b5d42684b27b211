"""The settings' layers: default < configuration file < environment < flag < run-time
change; a file's errors name the file, the line and the reason; live changes reach the
scheduler and are recorded as events, others are refused."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral import settings, settings_file
from corral.settings_file import key_lines


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for s in settings.SETTINGS.values():
        if s.env:
            monkeypatch.delenv(s.env, raising=False)
    monkeypatch.delenv("CORRAL_CONFIG", raising=False)
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    settings.reset()
    yield
    settings.reset()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_precedence_file_environment_flag_live(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.value("scheduler.cpu_ratio") == 4.0
    assert settings.source("scheduler.cpu_ratio") == "default"
    conf = write(tmp_path / "home" / "corral.toml",
                 "# mine\n[scheduler]\ncpu_ratio = 2.5\nqueue_policy = \"sjf\"\n"
                 "[images]\npath = [\"/a\", \"/b\"]\n")
    assert settings.value("scheduler.cpu_ratio") == 2.5  # HOME/corral.toml is found
    assert settings.source("scheduler.cpu_ratio") == f"{conf}:3"
    assert settings.value("images.path") == ["/a", "/b"]
    monkeypatch.setenv("CORRAL_CPU_RATIO", "3")
    assert settings.value("scheduler.cpu_ratio") == 3.0
    assert settings.source("scheduler.cpu_ratio") == "environment CORRAL_CPU_RATIO"
    settings.set_flag("cpu-ratio", "5")
    assert settings.value("scheduler.cpu_ratio") == 5.0
    assert settings.source("scheduler.cpu_ratio") == "--set scheduler.cpu_ratio"
    setting, old, new = settings.set_live("cpu_ratio", "6")
    assert (setting.key, old, new) == ("scheduler.cpu_ratio", 5.0, 6.0)
    assert settings.source("scheduler.cpu_ratio") == "corral host set"
    assert settings.value("scheduler.queue_policy") == "sjf"
    rows = {r["key"]: r for r in settings.table()}
    assert rows["scheduler.queue_policy"]["source"] == f"{conf}:4"
    assert rows["scheduler.cpu_ratio"]["live"] and not rows["home"]["live"]


def test_a_named_file_wins_and_home_and_socket_come_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.config import Paths, default_socket

    write(tmp_path / "home" / "corral.toml", "[scheduler]\ncpu_ratio = 2.0\n")
    named = write(tmp_path / "etc" / "corral.toml",
                  f"home = \"{tmp_path}/elsewhere\"\n[engine]\naccel = \"TCG\"\n")
    settings.load_file(named)
    assert settings.value("scheduler.cpu_ratio") == 4.0
    monkeypatch.delenv("CORRAL_HOME")  # the environment would win over the file
    assert Paths.from_env().home == tmp_path / "elsewhere"
    assert default_socket() == tmp_path / "elsewhere" / "corral.sock"
    assert settings.value("engine.accel") == "tcg"


def test_relative_image_directories_are_made_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM's kernel found in an image directory is stored with its path: relative, it
    named nothing once the daemon ran elsewhere, and a warm start from the VM's snapshot
    refused it as a client's relative path."""
    from corral.config import Paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORRAL_IMAGE_PATH", "build/images::/abs/images")
    home = Paths.from_env()
    assert home.image_path == [home.images, tmp_path / "build" / "images", Path("/abs/images")]


@pytest.mark.parametrize(("text", "message"), [
    ("[scheduler]\n\ncpu_ratoi = 2\n", ":3: unknown setting 'scheduler.cpu_ratoi' (did you "
                                       "mean scheduler.cpu_ratio?)"),
    ("colour = 1\n", ":1: unknown setting 'colour'"),
    ("[scheduler]\nqueue_policy = \"lifo\"\n", ":2: scheduler.queue_policy = 'lifo': expected "
                                               "one of fcfs, sjf, priority, fair"),
    ("[scheduler]\ncpu_ratio = \"much\"\n", ":2: scheduler.cpu_ratio = 'much'"),
    ("[scheduler]\nbackfill = [1]\n", ":2: scheduler.backfill: a list is not a value"),
    ("[scheduler\ncpu_ratio = 1\n", ":1: "),
    ("[scheduler]\ncpu_ratio = \"much\"\n", "'much' is not a number"),
    ("[scheduler]\nquantum = 0\n", ":2: scheduler.quantum = '0': 0 is out of range; give 0.05 "
                                   "to 3600"),
    ("[scheduler]\ncpu_ratio = 1e308\n", "out of range"),  # overflowed the capacity sums
    ("[metrics]\ninterval = nan\n", "out of range"),
    ("[engine]\npids_max = 2.5\n", "'2.5' is not a whole number"),
    ("[api]\nburst = -1\n", "-1 is out of range; give 1 to 1000000"),
])
def test_file_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(settings.SettingError) as err:
        settings.load_file(path)
    assert err.value.message.startswith(f"{path}:") and message in err.value.message


def test_key_lines_follow_tables_and_dotted_keys() -> None:
    text = "home = '/x'\n# c\n[scheduler]\ncpu_ratio = 1 # x\n\"queue-policy\" = 'sjf'\n" \
           "[host]\nmemory = '1G'\nimages.path = []\n"
    lines = key_lines(text)
    assert lines["home"] == 1 and lines["scheduler.cpu_ratio"] == 4
    assert lines["scheduler.queue_policy"] == 5 and lines["host.images.path"] == 8


def test_only_live_settings_change_at_run_time_and_bad_ones_are_undone() -> None:
    with pytest.raises(settings.SettingError, match="cannot change while the daemon runs"):
        settings.set_live("home", "/x")
    with pytest.raises(settings.SettingError, match="no setting named 'cpu-ration'"):
        settings.set_live("cpu-ration", "1")

    def refuse() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        settings.set_live("quantum", "5", refuse)
    assert settings.value("scheduler.quantum") == 2.0


def test_a_default_file_the_user_may_not_reach_is_none_of_theirs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unprivileged CLI whose HOME points into root's directories reads no file there
    (and does not fail on it)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "corral.toml").write_text("[scheduler]\ncpu_ratio = 2.0\n")
    real = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        # the kernel's answer to a user who may not enter the directory (what pathlib's
        # and os.path's checks both end in)
        if Path(path).parent == home:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    found = settings.config_path({"CORRAL_HOME": str(home)})
    assert found is None or found.parent != home


@given(st.lists(st.sampled_from([
    "", "# a comment", "  # indented — with ünïcode", "[images]", "[ paths ] # why", "[log]",
    "[a.b]", "[[x]]", "key = 1", "[images]x", "[]", "#\x01", "\r", "[bad", "\ufeff# bom",
    "[scheduler]\r", "\t[host]\t",
]), max_size=8))
def test_a_file_that_sets_nothing_is_known_without_tomllib(lines: list[str]) -> None:
    text = "\n".join(lines)
    if settings_file.sets_nothing(text):  # then tomllib reads tables and no key
        data = tomllib.loads(text)
        assert all(v == {} for v in data.values()), text


def test_the_installed_configuration_file_sets_nothing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = Path(__file__).parents[2] / "packaging" / "corral.toml"
    assert settings_file.sets_nothing(packaged.read_text())
    monkeypatch.setenv("CORRAL_CONFIG", str(packaged))
    assert settings.value("socket") is None and settings.file_path() == packaged
