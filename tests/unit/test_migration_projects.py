"""The projects migration (0006) on a store made before it: every VM, disk, network and
router that existed belongs to ``default``, which exists, and nothing else changes."""

from __future__ import annotations

import json
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from corral.store import db as store_db
from corral.store.db import Store


def test_existing_objects_go_to_default(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    engine = create_engine(f"sqlite:///{path}")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_db.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        spec = {"name": "old", "image": "tiny", "cpus": 2, "memory_bytes": 256 << 20,
                "kernel": None, "initrd": None, "cmdline": "", "machine": "q35",
                "cpu_model": "max", "disks": [], "nics": []}
        conn.execute(text("INSERT INTO vms (name, uid, spec, state, created_at, updated_at) "
                          "VALUES ('old', 'u1', :spec, 'stopped', 1, 1)"),
                     {"spec": json.dumps(spec)})
        conn.execute(text("INSERT INTO disks (name, path, format, created_at) "
                          "VALUES ('d1', '/x', 'qcow2', 1)"))
        conn.execute(text("INSERT INTO routers (name, plan, created_at) VALUES ('r', '{}', 1)"))
        conn.execute(text("INSERT INTO events (ts, vm, kind, detail) "
                          "VALUES (1, 'old', 'created', '{}')"))
    engine.dispose()
    store = Store(path)
    try:
        rec = store.get_vm("old")
        assert rec is not None and rec.project == "default" and rec.spec.cpus == 2
        assert [d["project"] for d in store.list_disks()] == ["default"]
        assert list(store.access.projects) == ["default"]
        assert store.access.projects["default"].quotas() == {
            "max_vms": None, "max_cpus": None, "max_memory": None, "max_disk": None}
        assert [e["project"] for e in store.events()] == ["default"]
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT project FROM routers")).scalar() == "default"
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() \
                == store_db.HEAD
    finally:
        store.close()
