"""The web trace viewer: one self-contained HTML file, or a local server that follows a file.

The page itself is static (``viewer/index.html``, ``viewer.css``, ``viewer.js``, shipped in
the package; no CDN, no build step): it reads the trace's JSONL lines and rebuilds the
tree in the browser.  ``render_html`` inlines the page and the lines into one file;
``TraceServer`` serves the page on 127.0.0.1 and the file's new lines from a byte offset
(``GET /trace?from=N``), which the page polls when following a growing trace.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["TraceServer", "page", "read_lines", "render_html"]

_MARK = "<!--RLM-CONFIG-->"
#: The most bytes one ``/trace`` reply carries (the page asks again for the rest).
CHUNK_BYTES = 8 << 20


def _asset(name: str) -> str:
    return (resources.files("rlm.trace") / "viewer" / name).read_text(encoding="utf-8")


def _config_tag(config: dict[str, Any]) -> str:
    # "<" escaped so that no string in the trace can close the script element
    text = json.dumps(config, ensure_ascii=False).replace("<", "\\u003c")
    return f'<script id="rlm-config" type="application/json">{text}</script>'


def page(config: dict[str, Any], *, inline: bool) -> str:
    """The viewer's HTML with ``config`` (``source``/``follow``/``name`` or ``lines``);
    ``inline`` puts the CSS and JS in the page itself."""
    html = _asset("index.html").replace(_MARK, _config_tag(config))
    if inline:
        html = html.replace('<link rel="stylesheet" href="viewer.css">',
                            f"<style>\n{_asset('viewer.css')}</style>")
        script = _asset("viewer.js").replace("</", "<\\/")
        html = html.replace('<script src="viewer.js"></script>', f"<script>\n{script}</script>")
    return html


def read_lines(path: Path, offset: int, limit: int = CHUNK_BYTES) -> tuple[list[str], int, bool]:
    """The complete lines of ``path`` from byte ``offset``: ``(lines, next_offset, reset)``.

    A line still being written (no newline yet) is left for the next read.  ``reset`` is
    true when the file became shorter than ``offset`` (rewritten): the lines are then read
    from the start.  A missing file reads as empty (it may not exist yet when following).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [], 0, offset > 0
    reset = size < offset
    start = 0 if reset else offset
    with path.open("rb") as handle:
        handle.seek(start)
        chunk = handle.read(limit)
    end = chunk.rfind(b"\n") + 1
    if end == 0 and len(chunk) == limit:  # one line longer than the limit: read it whole
        with path.open("rb") as handle:
            handle.seek(start)
            chunk = handle.readline()
        end = len(chunk) if chunk.endswith(b"\n") else 0
    text = chunk[:end].decode("utf-8", errors="replace")
    return text.splitlines(), start + end, reset


def render_html(path: str | Path) -> str:
    """One self-contained HTML page showing the trace file ``path`` (works offline)."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return page({"name": path.name, "lines": lines}, inline=True)


class TraceServer:
    """Serves the viewer for one trace file on ``host:port`` (0: a free port) in a thread.

    ``follow``: the page keeps polling for new lines.  Use as a context manager or call
    ``start`` / ``close``; ``url`` is the page's address.
    """

    def __init__(self, path: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 follow: bool = False, interval_ms: int = 1000) -> None:
        self.path = Path(path)
        config = {"name": self.path.name, "source": "trace", "follow": follow,
                  "interval_ms": interval_ms}
        self._html = page(config, inline=False).encode("utf-8")
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet: no stderr lines
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path in ("/", "/index.html"):
                    self._send(server._html, "text/html; charset=utf-8")
                elif url.path in ("/viewer.js", "/viewer.css"):
                    kind = "text/javascript" if url.path.endswith("js") else "text/css"
                    self._send(_asset(url.path[1:]).encode("utf-8"), kind + "; charset=utf-8")
                elif url.path == "/trace":
                    try:
                        offset = max(0, int(parse_qs(url.query).get("from", ["0"])[0]))
                    except ValueError:
                        self.send_error(HTTPStatus.BAD_REQUEST, "from must be an integer")
                        return
                    lines, nxt, reset = read_lines(server.path, offset)
                    body = json.dumps({"lines": lines, "next": nxt, "reset": reset})
                    self._send(body.encode("utf-8"), "application/json")
                else:
                    self.send_error(HTTPStatus.NOT_FOUND)

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def start(self) -> TraceServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever,
                                            name="rlm-trace-view", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self._httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> TraceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
