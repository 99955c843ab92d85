"""Serve the data dir's map pages over HTTP on 127.0.0.1, so links in the Dagster UI open them.

Browsers refuse ``file://`` links from a web page; ``make maps`` runs this server and the ``maps`` asset
links to ``$LOC2VEC_MAPS_URL/<path relative to the data dir>``. Only files under ``maps/`` are served.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEFAULT_PORT = 8765
SERVED = "maps"  # the one directory of the data dir that is served


def maps_port(environ: dict | None = None) -> int:
    """``$LOC2VEC_MAPS_PORT`` or :data:`DEFAULT_PORT`."""
    value = (os.environ if environ is None else environ).get("LOC2VEC_MAPS_PORT", "")
    return int(value) if value.strip() else DEFAULT_PORT


def maps_base_url(environ: dict | None = None) -> str:
    """``$LOC2VEC_MAPS_URL``, else ``http://127.0.0.1:$LOC2VEC_MAPS_PORT`` (no trailing slash)."""
    env = os.environ if environ is None else environ
    return (env.get("LOC2VEC_MAPS_URL") or f"http://127.0.0.1:{maps_port(env)}").rstrip("/")


def page_url(page: str | Path, data_dir: str | Path, base_url: str | None = None) -> str:
    """The served URL of ``page``, a file under ``data_dir``."""
    relative = Path(page).resolve().relative_to(Path(data_dir).resolve())
    return f"{base_url or maps_base_url()}/{relative.as_posix()}"


class _MapsHandler(SimpleHTTPRequestHandler):
    """Static files of the data dir's ``maps/`` only; anything else is 404."""

    def send_head(self):
        root = Path(self.directory, SERVED).resolve()
        target = Path(self.translate_path(self.path)).resolve()  # after "..", "%2e%2e" and symlinks
        if not target.is_relative_to(root):
            self.send_error(404, "only map pages are served here")
            return None
        return super().send_head()


def make_server(data_dir: str | Path, port: int | None = None, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A threading HTTP server over ``data_dir``'s ``maps/`` on ``host:port`` (0: a free port)."""
    handler = partial(_MapsHandler, directory=str(Path(data_dir).resolve()))
    return ThreadingHTTPServer((host, maps_port() if port is None else port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loc2vec.evaluation.serve_maps", description=__doc__)
    parser.add_argument("--dir", required=True, help="the data dir ($LOC2VEC_DATA_DIR): serves its maps/")
    parser.add_argument("--port", type=int, default=None, help="port ($LOC2VEC_MAPS_PORT, default 8765; 0: free)")
    args = parser.parse_args(argv)
    server = make_server(args.dir, args.port)
    print(f"serving {Path(args.dir).resolve() / SERVED} on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
