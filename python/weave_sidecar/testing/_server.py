"""The local trace server: HTTP handling, routes and the test control API."""

from __future__ import annotations

import base64
import collections
import email.parser
import email.policy
import http.server
import ipaddress
import json
import logging
import re
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable

from ._faults import Faults, Response
from ._store import Store, digest_of
from ._validate import InvalidRequest, check_batch, check_end, check_start

logger = logging.getLogger("weave_sidecar.testing")

_REQUEST_LOG_LIMIT = 100_000
_NO_AUTH = {"/server_info", "/health", "/"}
_GRAPHQL_OP = re.compile(r"\b(?:query|mutation)\s+([A-Za-z_][A-Za-z0-9_]*)")
_V2_CALLS = re.compile(r"^/v2/([^/]+)/([^/]+)/(call/start|call/end|calls/complete)$")

TEST_USERNAME = "sidecar-test"


class _HTTPError(Exception):
    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.body = {"reason": reason, **extra}


class _Reply:
    """What a route answers: JSON (default), NDJSON lines, or raw bytes."""

    def __init__(
        self,
        body: Any = None,
        status: int = 200,
        content_type: str = "application/json",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.data = raw if raw is not None else json.dumps(body).encode()
        self.headers = headers or {}


class TraceServer:
    """A Weave trace server on 127.0.0.1 for tests, the demo and the benchmark.

    It serves what ``weave.init("entity/project")`` and traced ops need (the
    GraphQL project and viewer queries too, so one URL is both
    ``WANDB_BASE_URL`` and ``WF_TRACE_SERVER_URL``), validates call bodies,
    stores calls in SQLite and records every call start and end it accepted.

    Usage::

        with TraceServer() as server:
            ...  # point the SDK at server.url
            assert not server.duplicates()

    Parameters:
        host: a loopback address (default ``127.0.0.1``); others are refused.
        port: 0 (default) picks a free port.
        latency_ms: added to every request (also ``faults.latency_ms``).
        db_path: SQLite file; None (default) keeps everything in memory.
        api_key: when set, Basic auth must carry this key; otherwise any
            Basic or Bearer credentials are accepted (none: 401).
        hang_timeout: how long a held request waits for ``faults.release()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0,
        db_path: str | None = None,
        *,
        api_key: str | None = None,
        hang_timeout: float = 60.0,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the local trace server serves loopback only, not {host}")
        self.faults = Faults(latency_ms=latency_ms, hang_timeout=hang_timeout)
        self.store = Store(db_path)
        self.username = TEST_USERNAME
        self._host, self._port = host, port
        self._api_key = api_key
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Guarded by _lock:
        self._request_seq = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._log: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=_REQUEST_LOG_LIMIT
        )

    # Lifecycle ---------------------------------------------------------------

    def start(self) -> TraceServer:
        """Bind and serve on a background thread; return self."""
        if self._httpd is not None:
            raise RuntimeError("the trace server is already started")
        handler = type("Handler", (_Handler,), {"app": self})
        self._httpd = _HTTPServer((self._host, self._port), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="weave-sidecar-trace-server",
            daemon=True,
        )
        self._thread.start()
        logger.debug("trace server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, release held requests and close the database."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.faults.release()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self.store.close()

    def __enter__(self) -> TraceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the trace server is not started")
        port = self._httpd.server_address[1]
        return f"http://{self._host}:{port}"

    # Inspection --------------------------------------------------------------

    def calls(self, project_id: str | None = None) -> list[dict[str, Any]]:
        """Stored calls as merged ``CallSchema`` rows, in arrival order.

        Each row also has ``_has_start`` and ``_has_end``.
        """
        return self.store.calls(project_id)

    def receipts(self) -> list[dict[str, Any]]:
        """Every call start/end accepted: ``{seq, project_id, call_id, mode,
        path, request}`` (mode "complete" stands for both)."""
        return self.store.receipts()

    def duplicates(self) -> list[dict[str, Any]]:
        """``{project_id, call_id, mode, count}`` for each start or end that
        arrived more than once (a "complete" counts as a start and an end)."""
        seen: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for r in self.receipts():
            modes = ("start", "end") if r["mode"] == "complete" else (r["mode"],)
            for mode in modes:
                seen[(r["project_id"], r["call_id"], mode)] += 1
        return [
            {"project_id": p, "call_id": c, "mode": m, "count": n}
            for (p, c, m), n in seen.items()
            if n > 1
        ]

    def missing(self, expected_ids: list[str]) -> dict[str, list[str]]:
        """Of expected_ids, those with no start and those with no end received."""
        got: dict[str, set[str]] = {"start": set(), "end": set()}
        for r in self.receipts():
            modes = ("start", "end") if r["mode"] == "complete" else (r["mode"],)
            for mode in modes:
                got[mode].add(r["call_id"])
        return {
            "start": [i for i in expected_ids if i not in got["start"]],
            "end": [i for i in expected_ids if i not in got["end"]],
        }

    def request_counts(self) -> dict[str, int]:
        """How many requests arrived per path (faulted ones included)."""
        with self._lock:
            return dict(self._counts)

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """The request log (last 100 000): ``{seq, method, path, status,
        user_agent, bytes, calls, seconds}``."""
        with self._lock:
            log = list(self._log)
        return [r for r in log if path is None or r["path"] == path]

    def user_agents(self, path: str) -> dict[str, int]:
        """How many requests on path came with each User-Agent."""
        return dict(collections.Counter(r["user_agent"] for r in self.requests(path)))

    def summary(self) -> dict[str, Any]:
        """Counts for reports: calls, receipts, duplicates, requests by path."""
        calls = self.calls()
        return {
            "calls": len(calls),
            "complete_calls": sum(
                1 for c in calls if c["_has_start"] and c["_has_end"]
            ),
            "receipts": len(self.receipts()),
            "duplicates": self.duplicates(),
            "request_counts": self.request_counts(),
            "upsert_batch_user_agents": self.user_agents("/call/upsert_batch"),
        }

    def reset(self, everything: bool = False) -> None:
        """Forget calls, receipts, counts and faults.

        Projects, objects and files stay unless everything is true, so a live
        client keeps working across a reset.
        """
        self.faults.clear()
        self.store.reset(everything)
        with self._lock:
            self._counts.clear()
            self._log.clear()

    # Request bookkeeping -----------------------------------------------------

    def _begin(self, path: str) -> int:
        with self._lock:
            self._request_seq += 1
            self._counts[path] += 1
            return self._request_seq

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)

    def _check_auth(self, header: str | None) -> None:
        if not header:
            raise _HTTPError(401, "missing credentials: use HTTP Basic auth")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value and self._api_key is None:
            return
        if scheme.lower() != "basic":
            raise _HTTPError(401, f"unsupported authorization scheme {scheme!r}")
        try:
            _, _, key = base64.b64decode(value).decode().partition(":")
        except ValueError:
            raise _HTTPError(401, "malformed Basic credentials") from None
        if not key or (self._api_key is not None and key != self._api_key):
            raise _HTTPError(401, "invalid API key")

    # Routes ------------------------------------------------------------------

    def _route(
        self, method: str, path: str, headers: Any, body: bytes, request: int
    ) -> tuple[_Reply, int]:
        """Answer one non-control request; return the reply and its call count."""
        if method == "GET" and path == "/server_info":
            return _Reply({
                "min_required_weave_python_version": "0.0.0",
                "trace_server_version": "999.0.0",
            }), 0  # fmt: skip
        if method == "GET" and path in ("/health", "/"):
            return _Reply({"status": "ok"}), 0
        if method != "POST":
            raise _HTTPError(405, f"{method} {path} is not served")
        if path in ("/files/create", "/file/create"):
            return self._file_create(headers, body), 0
        if path.startswith("/agents/otel/"):
            return _Reply(raw=b"", content_type="application/x-protobuf"), 0

        req = _json_body(body)
        m = _V2_CALLS.match(path)
        if m:
            return self._calls_v2(f"{m[1]}/{m[2]}", m[3], req, path, request)
        routes: dict[str, Callable[[Any, str, int], tuple[_Reply, int]]] = {
            "/call/start": self._call_start,
            "/call/end": self._call_end,
            "/call/upsert_batch": self._upsert_batch,
        }
        if path in routes:
            return routes[path](req, path, request)
        simple: dict[str, Callable[[Any], _Reply]] = {
            "/graphql": self._graphql,
            "/calls/stream_query": self._calls_stream_query,
            "/calls/query_stats": self._calls_query_stats,
            "/call/read": self._call_read,
            "/obj/create": self._obj_create,
            "/obj/read": self._obj_read,
            "/objs/query": self._objs_query,
            "/refs/read_batch": self._refs_read_batch,
            "/table/create": self._table_create,
            "/table/query": self._table_query,
            "/table/query_stats": self._table_query_stats,
            "/table/query_stats_batch": self._table_query_stats_batch,
            "/file/content": self._file_content,
            "/files/content": self._file_content,
            "/feedback/create": self._feedback_create,
            "/feedback/batch/create": self._feedback_batch_create,
        }
        if path in simple:
            return simple[path](req), 0
        raise _HTTPError(404, f"the local trace server does not serve {path}")

    # Calls

    def _guard_calls(
        self, items: list[tuple[str, dict[str, Any]]], legacy: bool
    ) -> None:
        rejected = self.faults.rejected_id([str(b.get("id")) for _, b in items])
        if rejected is not None:
            raise _HTTPError(400, f"call {rejected} is rejected by a test fault")
        if legacy:
            project = self.faults.needs_calls_complete(
                [b["project_id"] for _, b in items]
            )
            if project is not None:
                raise _HTTPError(
                    400,
                    f"project {project} requires calls_complete mode; upgrade to"
                    " weave >= 0.52.26",
                    error_code="CALLS_COMPLETE_MODE_REQUIRED",
                )

    def _checked(self, fn: Callable[[Any], Any], req: Any) -> Any:
        try:
            return fn(req)
        except InvalidRequest as exc:
            raise _HTTPError(400, str(exc)) from None

    def _call_start(self, req: Any, path: str, request: int) -> tuple[_Reply, int]:
        start = self._checked(check_start, req)
        start.setdefault("id", None)
        start["id"] = start["id"] or str(uuid.uuid4())
        start["trace_id"] = start.get("trace_id") or str(uuid.uuid4())
        items = [("start", start)]
        self._guard_calls(items, legacy=path == "/call/start")
        self.store.put_calls(items, path, request)
        return _Reply({"id": start["id"], "trace_id": start["trace_id"]}), 1

    def _call_end(self, req: Any, path: str, request: int) -> tuple[_Reply, int]:
        items = [("end", self._checked(check_end, req))]
        self._guard_calls(items, legacy=path == "/call/end")
        self.store.put_calls(items, path, request)
        return _Reply({}), 1

    def _upsert_batch(self, req: Any, path: str, request: int) -> tuple[_Reply, int]:
        items = self._checked(check_batch, req)
        res: list[dict[str, Any]] = []
        for mode, body in items:
            if mode == "start":
                body["id"] = body.get("id") or str(uuid.uuid4())
                body["trace_id"] = body.get("trace_id") or str(uuid.uuid4())
                res.append({"id": body["id"], "trace_id": body["trace_id"]})
            else:
                res.append({})
        self._guard_calls(items, legacy=True)
        self.store.put_calls(items, path, request)
        return _Reply({"res": res}), len(items)

    def _calls_v2(
        self, project_id: str, what: str, req: Any, path: str, request: int
    ) -> tuple[_Reply, int]:
        if what == "call/start":
            return self._call_start(req, path, request)
        if what == "call/end":
            return self._call_end(req, path, request)
        if not isinstance(req, dict) or not isinstance(req.get("batch"), list):
            raise _HTTPError(
                400, "CallsUpsertCompleteReq.batch: field required (a list)"
            )
        items = []
        for i, call in enumerate(req["batch"]):
            if not isinstance(call, dict):
                raise _HTTPError(400, f"batch[{i}]: expected an object")
            for name in ("id", "project_id", "op_name", "started_at", "ended_at"):
                if not isinstance(call.get(name), str):
                    raise _HTTPError(400, f"batch[{i}].{name}: field required")
            items.append(("complete", call))
        self._guard_calls(items, legacy=False)
        self.store.put_calls(items, path, request)
        return _Reply({}), len(items)

    def _query_calls(self, req: Any) -> list[dict[str, Any]]:
        if not isinstance(req, dict) or not isinstance(req.get("project_id"), str):
            raise _HTTPError(400, "project_id: field required")
        if req.get("query"):
            raise _HTTPError(
                400, "query expressions are not supported by the local trace server"
            )
        rows = [c for c in self.calls(req["project_id"]) if c["_has_start"]]
        f = req.get("filter") or {}

        def keep(row: dict[str, Any]) -> bool:
            for key, field in (
                ("call_ids", "id"),
                ("trace_ids", "trace_id"),
                ("parent_ids", "parent_id"),
                ("thread_ids", "thread_id"),
                ("turn_ids", "turn_id"),
                ("wb_run_ids", "wb_run_id"),
                ("wb_user_ids", "wb_user_id"),
            ):
                if f.get(key) is not None and row[field] not in f[key]:
                    return False
            if f.get("op_names") is not None and not any(
                _op_matches(row["op_name"], name) for name in f["op_names"]
            ):
                return False
            return not (f.get("trace_roots_only") and row["parent_id"] is not None)

        rows = [r for r in rows if keep(r)]
        for sort in reversed(req.get("sort_by") or []):
            field = sort.get("field", "started_at")
            rows.sort(
                key=lambda r: (r.get(field) is None, str(r.get(field))),
                reverse=sort.get("direction") == "desc",
            )
        offset = req.get("offset") or 0
        limit = req.get("limit")
        rows = rows[offset : None if limit is None else offset + limit]
        for r in rows:
            del r["_has_start"], r["_has_end"]
        return rows

    def _calls_stream_query(self, req: Any) -> _Reply:
        lines = b"".join(json.dumps(r).encode() + b"\n" for r in self._query_calls(req))
        return _Reply(raw=lines, content_type="application/jsonl")

    def _calls_query_stats(self, req: Any) -> _Reply:
        return _Reply({"count": len(self._query_calls(req))})

    def _call_read(self, req: Any) -> _Reply:
        if not isinstance(req, dict) or "id" not in req:
            raise _HTTPError(400, "id: field required")
        rows = self._query_calls({"project_id": req.get("project_id"),
                                  "filter": {"call_ids": [req["id"]]}})  # fmt: skip
        return _Reply({"call": rows[0] if rows else None})

    # Projects (W&B GraphQL)

    def _graphql(self, req: Any) -> _Reply:
        if not isinstance(req, dict) or not isinstance(req.get("query"), str):
            raise _HTTPError(400, "a GraphQL request needs a query")
        op = req.get("operationName") or ""
        if not op:
            m = _GRAPHQL_OP.search(req["query"])
            op = m[1] if m else ""
        v = req.get("variables") or {}
        viewer = {"username": self.username, "defaultEntity": {"name": self.username}}
        data: dict[str, Any]
        if op == "Project":
            entity, name = v.get("entityName"), v.get("name")
            exists = self.store.project_exists(str(entity), str(name))
            data = {"project": {"name": name} if exists else None}
        elif op == "UpsertModel":
            self.store.create_project(v.get("entity") or self.username, v["name"])
            data = {"upsertModel": {"model": {"name": v["name"], "description": None}}}
        elif op in ("DefaultEntity", "Viewer"):
            data = {"viewer": viewer}
        elif op == "ServerInfo":
            data = {"serverInfo": {"frontendHost": ""}}
        elif op == "Entity":
            data = {"entity": {"id": v.get("entityName"), "name": v.get("entityName")}}
        else:
            return _Reply({"data": None, "errors": [
                {"message": f"the local trace server does not answer {op or 'this'}"}
            ]})  # fmt: skip
        return _Reply({"data": data})

    # Objects, tables, files, refs

    def _obj_create(self, req: Any) -> _Reply:
        obj = (req or {}).get("obj") if isinstance(req, dict) else None
        if (
            not isinstance(obj, dict)
            or not all(isinstance(obj.get(k), str) for k in ("project_id", "object_id"))
            or "val" not in obj
        ):
            raise _HTTPError(400, "obj.project_id, obj.object_id, obj.val: required")
        digest = obj.get("expected_digest") or digest_of(obj["val"])
        base = obj.get("builtin_object_class") or obj.get("set_base_object_class")
        if base is None and isinstance(obj["val"], dict):
            bases = obj["val"].get("_bases") or []
            base = next((b for b in bases if b not in ("BaseModel", "Object")), None)
            base = obj["val"].get("_class_name") if base is None and bases else base
        self.store.put_object(
            obj["project_id"], obj["object_id"], obj["val"], digest, base
        )
        return _Reply({"digest": digest, "object_id": obj["object_id"]})

    def _obj_read(self, req: Any) -> _Reply:
        found = self.store.get_object(
            req["project_id"], req["object_id"], req["digest"]
        )
        if found is None:
            raise _HTTPError(
                404, f"object {req['object_id']}:{req['digest']} not found"
            )
        return _Reply({"obj": found})

    def _objs_query(self, req: Any) -> _Reply:
        objs = self.store.objects(req["project_id"])
        f = req.get("filter") or {}
        if f.get("object_ids") is not None:
            objs = [o for o in objs if o["object_id"] in f["object_ids"]]
        if f.get("latest_only"):
            objs = [o for o in objs if o["is_latest"]]
        if f.get("base_object_classes") is not None:
            objs = [
                o for o in objs if o["base_object_class"] in f["base_object_classes"]
            ]
        return _Reply({"objs": objs})

    def _table_create(self, req: Any) -> _Reply:
        table = req.get("table") if isinstance(req, dict) else None
        if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
            raise _HTTPError(400, "table.project_id and table.rows: required")
        rows = [
            {"digest": digest_of(row), "val": row, "original_index": i}
            for i, row in enumerate(table["rows"])
        ]
        digest = table.get("expected_digest") or digest_of([r["digest"] for r in rows])
        self.store.put_table(table["project_id"], digest, rows)
        return _Reply({"digest": digest, "row_digests": [r["digest"] for r in rows]})

    def _table_rows(self, project_id: str, digest: str) -> list[dict[str, Any]]:
        rows = self.store.get_table(project_id, digest)
        if rows is None:
            raise _HTTPError(404, f"table {digest} not found")
        return rows

    def _table_query(self, req: Any) -> _Reply:
        rows = self._table_rows(req["project_id"], req["digest"])
        wanted = (req.get("filter") or {}).get("row_digests")
        if wanted is not None:
            rows = [r for r in rows if r["digest"] in wanted]
        offset = req.get("offset") or 0
        limit = req.get("limit")
        return _Reply(
            {"rows": rows[offset : None if limit is None else offset + limit]}
        )

    def _table_query_stats(self, req: Any) -> _Reply:
        return _Reply(
            {"count": len(self._table_rows(req["project_id"], req["digest"]))}
        )

    def _table_query_stats_batch(self, req: Any) -> _Reply:
        tables = [
            {"digest": d, "count": len(self._table_rows(req["project_id"], d))}
            for d in req.get("digests") or []
        ]
        return _Reply({"tables": tables})

    def _file_create(self, headers: Any, body: bytes) -> _Reply:
        fields = _multipart(headers.get("Content-Type", ""), body)
        project_id = fields.get("project_id")
        content = fields.get("file")
        if not isinstance(project_id, bytes) or content is None:
            raise _HTTPError(400, "multipart fields project_id and file: required")
        expected = fields.get("expected_digest")
        digest = expected.decode() if expected else digest_of(content)
        self.store.put_file(project_id.decode(), digest, content)
        return _Reply({"digest": digest})

    def _file_content(self, req: Any) -> _Reply:
        content = self.store.get_file(req["project_id"], req["digest"])
        if content is None:
            raise _HTTPError(404, f"file {req['digest']} not found")
        return _Reply(raw=content, content_type="application/octet-stream")

    def _refs_read_batch(self, req: Any) -> _Reply:
        return _Reply({"vals": [self._resolve_ref(r) for r in req.get("refs") or []]})

    def _resolve_ref(self, ref: str) -> Any:
        if not ref.startswith("weave:///"):
            raise _HTTPError(400, f"not a weave ref: {ref}")
        parts = [urllib.parse.unquote(p) for p in ref[len("weave:///") :].split("/")]
        if len(parts) < 4:
            raise _HTTPError(400, f"not a weave ref: {ref}")
        entity, project, kind, name = parts[:4]
        project_id = f"{entity}/{project}"
        extra = parts[4:]
        val: Any
        if kind == "table":
            val = self._table_rows(project_id, name)
        elif kind in ("object", "op"):
            object_id, _, digest = name.partition(":")
            found = self.store.get_object(project_id, object_id, digest or "latest")
            if found is None:
                raise _HTTPError(404, f"object {name} not found")
            val = found["val"]
        else:
            raise _HTTPError(400, f"refs of kind {kind} are not served")
        for edge, key in zip(extra[::2], extra[1::2]):
            if isinstance(val, str) and val.startswith("weave:///"):
                val = self._resolve_ref(val)
            if edge == "id" and isinstance(val, list):
                val = next((r["val"] for r in val if r["digest"] == key), None)
            elif edge == "index" and isinstance(val, list):
                val = val[int(key)]
            elif isinstance(val, dict):
                val = val.get(key)
            else:
                return None
        return val

    # Feedback (accepted, not stored)

    def _feedback_create(self, req: Any) -> _Reply:
        return _Reply(_feedback_res(req))

    def _feedback_batch_create(self, req: Any) -> _Reply:
        return _Reply({"res": [_feedback_res(r) for r in req.get("batch") or []]})

    # Control API (/_test/...) ------------------------------------------------

    def _control(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        q = urllib.parse.parse_qs(query)
        arg = q.get("project_id", [None])[0]
        req = _json_body(body) if body else {}
        if path == "/_test/health":
            return _Reply({"ok": True})
        if path == "/_test/calls":
            return _Reply({"calls": self.calls(arg)})
        if path == "/_test/receipts":
            return _Reply({"receipts": self.receipts()})
        if path == "/_test/duplicates":
            return _Reply({"duplicates": self.duplicates()})
        if path == "/_test/missing" and method == "POST":
            return _Reply({"missing": self.missing(list(req.get("ids") or []))})
        if path == "/_test/request_counts":
            return _Reply({"counts": self.request_counts()})
        if path == "/_test/requests":
            return _Reply({"requests": self.requests(q.get("path", [None])[0])})
        if path == "/_test/summary":
            return _Reply(self.summary())
        if path == "/_test/reset" and method == "POST":
            self.reset(bool(req.get("everything")))
            return _Reply({"ok": True})
        if path == "/_test/faults":
            if method == "POST":
                try:
                    self.faults.apply(req)
                except (ValueError, KeyError, TypeError) as exc:
                    raise _HTTPError(400, f"bad fault spec: {exc}") from None
            return _Reply(self.faults.state())
        if path == "/_test/release" and method == "POST":
            return _Reply({"released": self.faults.release()})
        raise _HTTPError(404, f"no control endpoint {method} {path}")


def _op_matches(op_name: str | None, pattern: str) -> bool:
    if op_name is None:
        return False
    if pattern.endswith(":*"):
        return op_name.startswith(pattern[:-1])
    return op_name == pattern


def _feedback_res(req: Any) -> dict[str, Any]:
    return {
        "id": (req or {}).get("id") or str(uuid.uuid4()),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wb_user_id": TEST_USERNAME,
        "payload": (req or {}).get("payload") or {},
    }


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _HTTPError(400, f"the body is not valid JSON: {exc}") from None


def _multipart(content_type: str, body: bytes) -> dict[str, bytes | None]:
    if not content_type.startswith("multipart/form-data"):
        raise _HTTPError(400, "expected a multipart/form-data body")
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, bytes | None] = {}
    for part in msg.iter_parts():  # type: ignore[attr-defined,unused-ignore]
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)
            fields[str(name)] = payload if isinstance(payload, bytes) else None
    return fields


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "weave-sidecar-test-trace-server"
    app: TraceServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("trace server: " + format, *args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.data)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(reply.data)

    def _handle(self) -> None:
        app = self.app
        started = time.monotonic()
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        if path.startswith("/_test/"):
            try:
                reply = app._control(self.command, path, split.query, self._read_body())
            except _HTTPError as exc:
                reply = _Reply(exc.body, exc.status)
            self._send(reply)
            return

        request = app._begin(path)
        calls, length = 0, 0
        try:
            body = self._read_body()
            length = len(body)
            app._check_auth(self.headers.get("Authorization"))
            fault = app.faults.before(path, length)
            if fault is not None:
                reply = _fault_reply(fault)
            else:
                reply, calls = app._route(
                    self.command, path, self.headers, body, request
                )
        except _HTTPError as exc:
            reply = _Reply(exc.body, exc.status)
        except Exception as exc:
            logger.exception("trace server: %s %s failed", self.command, path)
            reply = _Reply({"reason": f"internal error: {exc}"}, 500)
        # Recorded before answering, so a client that has its answer sees it.
        app._record({
            "seq": request,
            "method": self.command,
            "path": path,
            "status": reply.status,
            "user_agent": self.headers.get("User-Agent", ""),
            "bytes": length,
            "calls": calls if reply.status < 300 else 0,
            "seconds": round(time.monotonic() - started, 6),
        })  # fmt: skip
        try:
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _fault_reply(fault: Response) -> _Reply:
    headers = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
    body = fault.body if fault.body is not None else {"reason": "injected fault"}
    return _Reply(body, fault.status, headers=headers)
