"""A tiny Hugging Face Hub on 127.0.0.1, for download tests without internet.

:class:`TinyHub` serves repositories held in memory with the endpoints and
headers that ``huggingface_hub`` and ``datasets`` use to download:

* ``GET /api/{datasets,models}/{repo}[/revision/{rev}]``: the repository's
  info (``sha``, ``siblings``);
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``) and
  ``POST /api/{type}s/{repo}/paths-info/{rev}``: file listings;
* ``HEAD``/``GET /[datasets/]{repo}/resolve/{rev}/{path}``: a file, with
  ``X-Repo-Commit``, ``ETag`` and ``Content-Length`` (and ``Range``).

Misses answer 404 with the ``X-Error-Code`` the Hub sends
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``). Every request
is recorded (:attr:`TinyHub.requests`); :attr:`TinyHub.status` makes every
answer that status (a server in trouble), :attr:`TinyHub.cut_after` closes
the connection after that many bytes of the next :attr:`TinyHub.cuts` file
bodies (a transfer broken half-way). The server runs in a daemon thread
on an ephemeral loopback port and stops when the ``with`` block ends or
after ``lifetime`` seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
import urllib.parse
from typing import Optional

_TYPES = {"datasets": "dataset", "models": "model"}


@dataclasses.dataclass
class Repo:
  sha: str
  files: dict[str, bytes]


def git_sha(files: dict[str, bytes]) -> str:
  """A 40-hex commit id that changes with the files."""
  digest = hashlib.sha1()
  for path in sorted(files):
    digest.update(path.encode() + b"\0" + files[path])
  return digest.hexdigest()


class TinyHub:
  """An in-memory Hub (see the module docstring); use as a context manager.

  Attributes:
    repos: ``(type, repo_id) -> Repo``; type ``"dataset"`` or ``"model"``.
    requests: ``(method, path)`` of every request answered.
    status: answer every request with this HTTP status (None: serve).
    cut_after: end file bodies after this many bytes (None: whole files).
    cuts: how many more file bodies to cut.
  """

  def __init__(self, lifetime: float = 120.0):
    self.repos: dict[tuple[str, str], Repo] = {}
    self.requests: list[tuple[str, str]] = []
    self.status: Optional[int] = None
    self.cut_after: Optional[int] = None
    self.cuts = 0
    self.lifetime = lifetime
    self._lock = threading.Lock()
    self._server: Optional[http.server.ThreadingHTTPServer] = None
    self._timer: Optional[threading.Timer] = None

  def add(self, repo_type: str, repo_id: str, files: dict[str, bytes]) -> str:
    """Adds (or replaces) a repository; returns its commit id."""
    repo = Repo(git_sha(files), dict(files))
    self.repos[(repo_type, repo_id)] = repo
    return repo.sha

  @property
  def url(self) -> str:
    host, port = self._server.server_address[:2]
    return f"http://{host}:{port}"

  def downloads(self, suffix: str = "") -> list[str]:
    """Paths of the file bodies sent (``GET .../resolve/...``)."""
    with self._lock:
      return [p for m, p in self.requests
              if m == "GET" and "/resolve/" in p and p.endswith(suffix)]

  def __enter__(self) -> "TinyHub":
    hub = self

    class Handler(_Handler):
      tiny_hub = hub

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    thread = threading.Thread(target=self._server.serve_forever,
                              kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    self._timer = threading.Timer(self.lifetime, self._server.shutdown)
    self._timer.daemon = True
    self._timer.start()
    return self

  def __exit__(self, *exc) -> None:
    self._timer.cancel()
    self._server.shutdown()
    self._server.server_close()

  def record(self, method: str, path: str) -> None:
    with self._lock:
      self.requests.append((method, path))


class _Handler(http.server.BaseHTTPRequestHandler):
  tiny_hub: TinyHub
  protocol_version = "HTTP/1.1"

  def log_message(self, *args) -> None:  # quiet
    del args

  # -- answers -----------------------------------------------------------------
  def _send(self, status: int, body: bytes = b"", headers=None,
            head: bool = False) -> None:
    self.send_response(status)
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    if "Content-Length" not in (headers or {}):
      self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if not head:
      self.wfile.write(body)

  def _json(self, value, head: bool = False) -> None:
    self._send(200, json.dumps(value).encode(),
               {"Content-Type": "application/json"}, head)

  def _error(self, status: int, code: str, head: bool = False) -> None:
    body = json.dumps({"error": code}).encode()
    self._send(status, body, {"X-Error-Code": code,
                              "X-Error-Message": code,
                              "Content-Type": "application/json"}, head)

  # -- routing -----------------------------------------------------------------
  def do_HEAD(self) -> None:  # pylint: disable=invalid-name
    self._route(head=True)

  def do_GET(self) -> None:  # pylint: disable=invalid-name
    self._route()

  def do_POST(self) -> None:  # pylint: disable=invalid-name
    length = int(self.headers.get("Content-Length") or 0)
    form = urllib.parse.parse_qs(self.rfile.read(length).decode())
    self._route(form=form)

  def _route(self, head: bool = False, form=None) -> None:
    hub = self.tiny_hub
    hub.record(self.command, self.path)
    if hub.status is not None:
      self._error(hub.status, "ServerError", head)
      return
    url = urllib.parse.urlsplit(self.path)
    parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
    query = urllib.parse.parse_qs(url.query)
    if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in _TYPES:
      self._api(_TYPES[parts[1]], "/".join(parts[2:4]), parts[4:], query,
                form, head)
    elif "resolve" in parts:
      at = parts.index("resolve")
      kind = "dataset" if parts[0] == "datasets" else "model"
      repo_parts = parts[1:at] if kind == "dataset" else parts[:at]
      if len(parts) < at + 3:
        self._error(404, "EntryNotFound", head)
        return
      self._file(kind, "/".join(repo_parts), parts[at + 1],
                 "/".join(parts[at + 2:]), head)
    else:
      self._error(404, "RepoNotFound", head)

  def _repo(self, kind: str, repo_id: str, revision: str, head: bool
            ) -> Optional[Repo]:
    repo = self.tiny_hub.repos.get((kind, repo_id))
    if repo is None:
      self._error(404, "RepoNotFound", head)
      return None
    if revision not in ("main", repo.sha):
      self._error(404, "RevisionNotFound", head)
      return None
    return repo

  def _api(self, kind, repo_id, rest, query, form, head) -> None:
    revision = rest[1] if len(rest) >= 2 else "main"
    repo = self._repo(kind, repo_id, revision, head)
    if repo is None:
      return
    if not rest or rest[0] == "revision":
      self._json({"id": repo_id, "_id": repo.sha[:24], "sha": repo.sha,
                  "private": False, "gated": False, "disabled": False,
                  "tags": [], "cardData": {},
                  "siblings": [{"rfilename": p} for p in sorted(repo.files)]},
                 head)
    elif rest[0] == "tree":
      prefix = "/".join(rest[2:])
      recursive = query.get("recursive", ["False"])[0].lower() == "true"
      self._json(_listing(repo, prefix, recursive), head)
    elif rest[0] == "paths-info":
      wanted = set((form or {}).get("paths", []))
      every = _listing(repo, "", recursive=True)
      self._json([e for e in every if e["path"] in wanted], head)
    else:
      self._error(404, "RepoNotFound", head)

  def _file(self, kind, repo_id, revision, path, head) -> None:
    repo = self._repo(kind, repo_id, revision, head)
    if repo is None:
      return
    if path not in repo.files:
      self._error(404, "EntryNotFound", head)
      return
    body = repo.files[path]
    etag = f'"{hashlib.sha1(body).hexdigest()}"'
    headers = {"X-Repo-Commit": repo.sha, "ETag": etag,
               "Content-Type": "application/octet-stream",
               "Accept-Ranges": "bytes"}
    status, start = 200, 0
    ranged = self.headers.get("Range", "")
    if ranged.startswith("bytes=") and not head:
      start = int(ranged[len("bytes="):].split("-")[0] or 0)
      status = 206
      headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
    payload = body[start:]
    headers["Content-Length"] = str(len(payload))
    cut = self.tiny_hub.cut_after
    with self.tiny_hub._lock:  # pylint: disable=protected-access
      if cut is not None and not head and self.tiny_hub.cuts > 0:
        self.tiny_hub.cuts -= 1
      else:
        cut = None
    if cut is not None:
      self.send_response(status)
      for key, value in headers.items():
        self.send_header(key, value)
      self.end_headers()
      self.wfile.write(payload[:cut])
      self.wfile.flush()
      self.close_connection = True
      return
    self._send(status, payload, headers, head)


def _listing(repo: Repo, prefix: str, recursive: bool) -> list[dict]:
  """Tree entries under ``prefix`` (files, and folders one level down)."""
  base = prefix.strip("/")
  entries, folders = [], set()
  for path in sorted(repo.files):
    if base and not path.startswith(base + "/"):
      continue
    rest = path[len(base) + 1:] if base else path
    if "/" in rest and not recursive:
      folders.add(((base + "/") if base else "") + rest.split("/")[0])
      continue
    if recursive:
      parts = path.split("/")
      for i in range(len(base.split("/")) if base else 0, len(parts) - 1):
        folders.add("/".join(parts[:i + 1]))
    body = repo.files[path]
    entries.append({"type": "file", "path": path, "size": len(body),
                    "oid": hashlib.sha1(body).hexdigest()})
  return ([{"type": "directory", "path": f, "oid": "0" * 40}
           for f in sorted(folders)] + entries)
