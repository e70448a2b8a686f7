"""A throw-away HTTP server on 127.0.0.1 (a free port) for download tests."""
from __future__ import annotations

import http.server
import threading


class LocalServer:
    """Serves ``handler`` in a thread while used as a context manager; ``url`` is its base address."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
