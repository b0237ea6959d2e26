"""SQLite storage for the local trace server: calls, receipts, objects, files.

One connection, shared by the server's threads under a lock. A call is stored
as its start and end JSON and merged into a ``CallSchema`` row when read.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    project_id TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    start_json TEXT,
    end_json TEXT,
    PRIMARY KEY (project_id, id)
);
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    path TEXT NOT NULL,
    request INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    project_id TEXT NOT NULL,
    object_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    version_index INTEGER NOT NULL,
    base_object_class TEXT,
    created_at TEXT NOT NULL,
    val_json TEXT NOT NULL,
    PRIMARY KEY (project_id, object_id, digest)
);
CREATE TABLE IF NOT EXISTS files (
    project_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    content BLOB NOT NULL,
    PRIMARY KEY (project_id, digest)
);
CREATE TABLE IF NOT EXISTS tables_ (
    project_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    rows_json TEXT NOT NULL,
    PRIMARY KEY (project_id, digest)
);
CREATE TABLE IF NOT EXISTS projects (
    entity TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (entity, name)
);
"""


def digest_of(value: Any) -> str:
    """A stable content digest (hex sha256 of canonical JSON, or of bytes)."""
    data = value if isinstance(value, bytes) else _canonical(value).encode()
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        # Python < 3.11 does not read a trailing Z.
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def merge_call(
    start: dict[str, Any] | None, end: dict[str, Any] | None
) -> dict[str, Any]:
    """Build a ``CallSchema`` row from a call's start and end."""
    s = start or {}
    e = end or {}
    row: dict[str, Any] = {
        "id": s.get("id") or e.get("id"),
        "project_id": s.get("project_id") or e.get("project_id"),
        "op_name": s.get("op_name"),
        "display_name": s.get("display_name"),
        "trace_id": s.get("trace_id") or e.get("trace_id"),
        "parent_id": s.get("parent_id"),
        "thread_id": s.get("thread_id"),
        "turn_id": s.get("turn_id"),
        "started_at": s.get("started_at") or e.get("started_at"),
        "attributes": s.get("attributes", {}),
        "inputs": s.get("inputs", {}),
        "ended_at": e.get("ended_at"),
        "exception": e.get("exception"),
        "output": e.get("output"),
        "summary": dict(e.get("summary") or {}),
        "wb_user_id": s.get("wb_user_id"),
        "wb_run_id": s.get("wb_run_id"),
        "wb_run_step": s.get("wb_run_step"),
        "wb_run_step_end": e.get("wb_run_step_end"),
        "deleted_at": None,
    }
    if end is None:
        status = "running"
    elif e.get("exception") is not None:
        status = "error"
    else:
        status = "success"
    weave_summary: dict[str, Any] = {"status": status}
    op_name = row["op_name"] or ""
    trace_name = row["display_name"] or op_name.rsplit("/", 1)[-1].split(":", 1)[0]
    if trace_name:
        weave_summary["trace_name"] = trace_name
    t0, t1 = _parse_time(row["started_at"]), _parse_time(row["ended_at"])
    if t0 is not None and t1 is not None:
        weave_summary["latency_ms"] = int((t1 - t0).total_seconds() * 1000)
    row["summary"]["weave"] = {**weave_summary, **row["summary"].get("weave", {})}
    return row


class Store:
    """Thread-safe SQLite storage; path None keeps everything in memory."""

    def __init__(self, path: str | None = None) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path or ":memory:", check_same_thread=False)
        with self._lock:
            self._db.executescript(_SCHEMA)
        self._seq = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reset(self, everything: bool = False) -> None:
        """Forget calls and receipts (and objects, files, projects if everything)."""
        tables = ["calls", "receipts"]
        if everything:
            tables += ["objects", "files", "tables_", "projects"]
        with self._lock, self._db:
            for t in tables:
                self._db.execute(f"DELETE FROM {t}")

    # Calls -------------------------------------------------------------------

    def put_calls(
        self, items: Iterable[tuple[str, dict[str, Any]]], path: str, request: int
    ) -> None:
        """Store ("start" | "end" | "complete", body) items and their receipts.

        A call seen again is upserted: the newer start or end replaces the old.
        """
        with self._lock, self._db:
            for mode, body in items:
                project_id, call_id = body["project_id"], body["id"]
                self._seq += 1
                self._db.execute(
                    "INSERT OR IGNORE INTO calls (project_id, id, seq)"
                    " VALUES (?, ?, ?)",
                    (project_id, call_id, self._seq),
                )
                text = _canonical(body)
                if mode in ("start", "complete"):
                    self._db.execute(
                        "UPDATE calls SET start_json = ?"
                        " WHERE project_id = ? AND id = ?",
                        (text, project_id, call_id),
                    )
                if mode in ("end", "complete"):
                    self._db.execute(
                        "UPDATE calls SET end_json = ? WHERE project_id = ? AND id = ?",
                        (text, project_id, call_id),
                    )
                self._db.execute(
                    "INSERT INTO receipts (project_id, call_id, mode, path, request)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (project_id, call_id, mode, path, request),
                )

    def calls(self, project_id: str | None = None) -> list[dict[str, Any]]:
        """Merged rows in arrival order; "_has_start"/"_has_end" say what came."""
        query = "SELECT start_json, end_json FROM calls"
        args: tuple[Any, ...] = ()
        if project_id is not None:
            query += " WHERE project_id = ?"
            args = (project_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        out = []
        for start_json, end_json in rows:
            start = json.loads(start_json) if start_json else None
            end = json.loads(end_json) if end_json else None
            row = merge_call(start, end)
            row["_has_start"] = start is not None
            row["_has_end"] = end is not None
            out.append(row)
        return out

    def receipts(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, project_id, call_id, mode, path, request FROM receipts"
                " ORDER BY seq"
            ).fetchall()
        keys = ("seq", "project_id", "call_id", "mode", "path", "request")
        return [dict(zip(keys, r)) for r in rows]

    # Projects, objects, files, tables ----------------------------------------

    def project_exists(self, entity: str, name: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM projects WHERE entity = ? AND name = ?", (entity, name)
            ).fetchone()
        return row is not None

    def create_project(self, entity: str, name: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO projects (entity, name) VALUES (?, ?)",
                (entity, name),
            )

    def put_object(
        self,
        project_id: str,
        object_id: str,
        val: Any,
        digest: str,
        base_object_class: str | None,
    ) -> None:
        with self._lock, self._db:
            exists = self._db.execute(
                "SELECT 1 FROM objects"
                " WHERE project_id = ? AND object_id = ? AND digest = ?",
                (project_id, object_id, digest),
            ).fetchone()
            if exists:
                return
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM objects WHERE project_id = ? AND object_id = ?",
                (project_id, object_id),
            ).fetchone()
            self._db.execute(
                "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)",
                (project_id, object_id, digest, count, base_object_class, _now(),
                 _canonical(val)),
            )  # fmt: skip

    def get_object(
        self, project_id: str, object_id: str, digest: str
    ) -> dict[str, Any] | None:
        """An ``ObjSchema`` dict; digest "latest" picks the newest version."""
        query = (
            "SELECT digest, version_index, base_object_class, created_at, val_json,"
            " (SELECT MAX(version_index) FROM objects o2 WHERE o2.project_id ="
            " objects.project_id AND o2.object_id = objects.object_id)"
            " FROM objects WHERE project_id = ? AND object_id = ?"
        )
        args: tuple[Any, ...] = (project_id, object_id)
        if digest == "latest":
            query += " ORDER BY version_index DESC LIMIT 1"
        else:
            query += " AND digest = ?"
            args += (digest,)
        with self._lock:
            row = self._db.execute(query, args).fetchone()
        if row is None:
            return None
        digest, version, base_class, created_at, val_json, latest = row
        val = json.loads(val_json)
        kind = (
            "op"
            if isinstance(val, dict) and val.get("_class_name") == "Op"
            else "object"
        )
        return {
            "project_id": project_id,
            "object_id": object_id,
            "digest": digest,
            "version_index": version,
            "is_latest": int(version == latest),
            "kind": kind,
            "base_object_class": base_class,
            "leaf_object_class": base_class,
            "created_at": created_at,
            "val": val,
            "deleted_at": None,
            "wb_user_id": None,
        }

    def objects(self, project_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT object_id, digest FROM objects WHERE project_id = ?"
                " ORDER BY object_id, version_index",
                (project_id,),
            ).fetchall()
        found = [self.get_object(project_id, oid, d) for oid, d in rows]
        return [o for o in found if o is not None]

    def put_file(self, project_id: str, digest: str, content: bytes) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?)",
                (project_id, digest, content),
            )

    def get_file(self, project_id: str, digest: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT content FROM files WHERE project_id = ? AND digest = ?",
                (project_id, digest),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def put_table(
        self, project_id: str, digest: str, rows: list[dict[str, Any]]
    ) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO tables_ VALUES (?, ?, ?)",
                (project_id, digest, _canonical(rows)),
            )

    def get_table(self, project_id: str, digest: str) -> list[dict[str, Any]] | None:
        """Rows as ``{"digest", "val", "original_index"}``."""
        with self._lock:
            row = self._db.execute(
                "SELECT rows_json FROM tables_ WHERE project_id = ? AND digest = ?",
                (project_id, digest),
            ).fetchone()
        if row is None:
            return None
        result: list[dict[str, Any]] = json.loads(row[0])
        return result
