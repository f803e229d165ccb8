"""The results store: one SQLite file per results directory, safe for concurrent writers.

A run is keyed by its config hash. Status is ``running`` while it trains, ``done`` only after
its final metrics are written in the same transaction, ``failed`` with the error otherwise;
a run killed mid-way stays ``running`` with a stale heartbeat and is never counted as done.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drt.errors import DrtError
from drt.experiments.renames import upgrade

STORE_NAME = "drt.sqlite"  # the store's file name inside a results folder


def run_folder(results_dir: str | Path, run_id: str) -> Path:
    """``<results>/runs/<run_id>``; a run id is 16 hex digits, so a forged store row (``../..``) cannot
    point a run's folder outside the results directory."""
    if not re.fullmatch(r"[0-9a-f]{16}", run_id):
        raise DrtError(f"{run_id!r} is not a run id (16 hex digits); the store at {results_dir} may be damaged")
    return Path(results_dir) / "runs" / run_id


SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, label TEXT, status TEXT NOT NULL, model TEXT, dataset TEXT, method TEXT,
    seed INTEGER, config TEXT NOT NULL, env TEXT, metrics TEXT, error TEXT,
    created REAL, updated REAL, owner TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch)
);
"""


def owner() -> str:
    """This process, as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def alive(owner: str) -> bool:
    """Whether ``host:pid`` names a live process (other hosts are assumed alive)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Runs and their per-epoch metrics in ``<results>/drt.sqlite`` (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._conn() as c:
                c.execute("PRAGMA journal_mode=WAL")
                c.executescript(SCHEMA)
                if "owner" not in {r["name"] for r in c.execute("PRAGMA table_info(runs)")}:
                    c.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
        except OSError as e:
            raise DrtError(f"cannot use results store {self.path}: {e.strerror or e}") from None
        except sqlite3.DatabaseError as e:  # left untouched: it may be somebody's file
            raise DrtError(f"{self.path} is not a usable drt results store ({e}); "
                           "move it away or choose another --results-dir") from None

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=60)
        conn.row_factory = sqlite3.Row
        try:
            with conn:  # one transaction: committed on success, rolled back on error
                yield conn
        finally:
            conn.close()

    def status(self, run_id: str) -> str | None:
        with self._conn() as c:
            row = c.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
        return row["status"] if row else None

    def claim(self, run_id: str, label: str = "", config: dict[str, Any] | None = None,
              redo: bool = False) -> str | None:
        """Take the run for this process unless a live process on this host already runs it.

        Returns the other owner (``host:pid``) if the run is busy, ``"done"`` if it has finished
        (unless ``redo``), else None. Atomic across processes (one write transaction): a run not
        yet in the store gets a ``running`` row owned by this process (``start`` fills it in), so
        two processes never train the same run at once and a run finished meanwhile is not redone.
        """
        with self._conn() as c:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute("SELECT status, owner FROM runs WHERE id=?", (run_id,)).fetchone()
            me = owner()
            if row and row["status"] == "done" and not redo:
                return "done"
            if row and row["status"] == "running" and row["owner"] and row["owner"] != me and alive(row["owner"]):
                return row["owner"]
            if row:
                c.execute("UPDATE runs SET owner=? WHERE id=?", (me, run_id))
            elif config is not None:
                now = time.time()
                c.execute("INSERT INTO runs (id, label, status, config, created, updated, owner) "
                          "VALUES (?,?,'running',?,?,?,?)", (run_id, label, json.dumps(config), now, now, me))
        return None

    def release(self, run_id: str) -> None:
        """Drop this process's claim placeholder of a run that never started (a started run is kept)."""
        with self._conn() as c:
            c.execute("DELETE FROM runs WHERE id=? AND owner=? AND env IS NULL AND status='running'", (run_id, owner()))

    def start(self, run_id: str, label: str, config: dict[str, Any], env: dict[str, Any]) -> None:
        now = time.time()
        with self._conn() as c:
            c.execute("DELETE FROM epochs WHERE run_id=?", (run_id,))
            c.execute(
                "INSERT OR REPLACE INTO runs (id, label, status, model, dataset, method, seed, config, env,"
                " metrics, error, created, updated, owner) VALUES (?,?,?,?,?,?,?,?,?,NULL,NULL,?,?,?)",
                (run_id, label, "running", config["model"]["model"], config["data"]["dataset"], config["method"],
                 config["train"]["seed"], json.dumps(config), json.dumps(env), now, now, owner()))

    def mark_running(self, run_id: str) -> bool:
        """Set a resumed run back to ``running``; False if the store has no such started run."""
        with self._conn() as c:
            cur = c.execute("UPDATE runs SET status='running', error=NULL, updated=? WHERE id=? AND env IS NOT NULL",
                            (time.time(), run_id))  # a claim placeholder (no env yet) is not a started run
        return cur.rowcount == 1

    def add_epoch(self, run_id: str, metrics: dict[str, Any]) -> None:
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO epochs VALUES (?,?,?)", (run_id, metrics["epoch"], json.dumps(metrics)))
            c.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))

    def finish(self, run_id: str, metrics: dict[str, Any]) -> None:
        with self._conn() as c:
            c.execute("UPDATE runs SET status='done', metrics=?, error=NULL, updated=? WHERE id=?",
                      (json.dumps(metrics), time.time(), run_id))

    def fail(self, run_id: str, error: str) -> None:
        with self._conn() as c:
            c.execute("UPDATE runs SET status='failed', error=?, updated=? WHERE id=?", (error, time.time(), run_id))

    def runs(self, status: str | None = None) -> list[dict[str, Any]]:
        """All runs (optionally of one status), oldest first, JSON columns decoded, configs with
        today's setting names (``renames.upgrade``)."""
        query = "SELECT * FROM runs"
        args: tuple[str, ...] = ()
        if status:
            query, args = query + " WHERE status=?", (status,)
        with self._conn() as c:
            rows = c.execute(query + " ORDER BY created", args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for k in ("config", "env", "metrics"):
                d[k] = json.loads(d[k]) if d[k] else None
            d["config"] = upgrade(d["config"])  # settings renamed since: today's names
            out.append(d)
        return out

    def run(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.runs() if r["id"] == run_id), None)

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        with self._conn() as c:
            rows = c.execute("SELECT metrics FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,)).fetchall()
        return [json.loads(r["metrics"]) for r in rows]


def flat_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per run (identity columns + final metrics) for tables and CSV."""
    rows = []
    for r in runs:
        row = {k: r[k] for k in ("id", "status", "model", "dataset", "method", "seed")}
        row.update(r["metrics"] or {})
        if r["error"]:
            row["error"] = r["error"]
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
