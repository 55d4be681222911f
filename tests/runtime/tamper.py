"""A hostile registry for tests: a proxy in front of a real one that rewrites answers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

# (path, body) -> new body
Rewrite = Callable[[str, bytes], bytes]


class TamperingProxy:
    def __init__(self, upstream: str, rewrite: Rewrite) -> None:
        proxy = self
        self.rewrite = rewrite
        self.upstream = upstream

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() == "accept"}
                with httpx.Client(timeout=10, follow_redirects=True) as http:
                    answer = http.get(proxy.upstream + self.path, headers=headers)
                body = proxy.rewrite(self.path, answer.content)
                self.send_response(answer.status_code)
                for key in ("Content-Type", "Docker-Content-Digest"):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
