"""A small provd REST API on a loopback port: it stores documents and returns them as provd does.

Only what `xivo-ha` uses: ``GET cfg_mgr/configs``, ``GET|PUT cfg_mgr/configs/<id>``,
``GET dev_mgr/devices``, ``POST dev_mgr/synchronize``, with provd's media type checks
(406 without the Accept header, 415 for another Content-Type) and its answers
(``{"configs": [...]}``, ``{"config": {...}}``, 204 after a PUT, 201 + Location after a
synchronize, 404 "No such resource" for an unknown id).
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MIME = "application/vnd.proformatique.provd+json"


class FakeProvd:
    def __init__(self, configs: list[dict], devices: list[dict]):
        self.configs = {c["id"]: copy.deepcopy(c) for c in configs}
        self.devices = {d["id"]: copy.deepcopy(d) for d in devices}
        self.synchronized: list[str] = []
        self.refuse_put: set[str] = set()
        self.puts: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/provd"

    def __enter__(self) -> "FakeProvd":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        provd = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict | None = None, headers: dict | None = None):
                data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
                self.send_response(code)
                if body is not None:
                    self.send_header("Content-Type", MIME)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _text(self, code: int, text: str):
                data = text.encode("ascii")
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=ascii")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _entity(self) -> dict | None:
                if self.headers.get("Content-Type") != MIME:
                    self._text(415, f'Entity must be in media type "{MIME}".')
                    return None
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def _parts(self) -> list[str]:
                path = self.path.split("?")[0]
                assert path.startswith("/provd/"), path
                return path[len("/provd/"):].strip("/").split("/")

            def do_GET(self):
                if MIME not in (self.headers.get("Accept") or ""):
                    return self._text(406, f'You must accept the "{MIME}" MIME type.')
                parts = self._parts()
                if parts == ["cfg_mgr", "configs"]:
                    return self._send(200, {"configs": list(provd.configs.values())})
                if parts[:2] == ["cfg_mgr", "configs"] and len(parts) == 3:
                    if parts[2] not in provd.configs:
                        return self._text(404, "No such resource")
                    return self._send(200, {"config": provd.configs[parts[2]]})
                if parts == ["dev_mgr", "devices"]:
                    return self._send(200, {"devices": list(provd.devices.values())})
                return self._text(404, "No such resource")

            def do_PUT(self):
                parts = self._parts()
                content = self._entity()
                if content is None:
                    return None
                if parts[:2] != ["cfg_mgr", "configs"] or len(parts) != 3 or parts[2] not in provd.configs:
                    return self._text(404, "No such resource")
                if parts[2] in provd.refuse_put:
                    return self._text(500, f"cannot write config {parts[2]}: disk full")
                config = content["config"]
                config["id"] = parts[2]
                provd.configs[parts[2]] = config
                provd.puts.append(parts[2])
                return self._send(204)

            def do_POST(self):
                parts = self._parts()
                content = self._entity()
                if content is None:
                    return None
                if parts != ["dev_mgr", "synchronize"]:
                    return self._text(404, "No such resource")
                if "id" not in content:
                    return self._text(400, 'Missing "id" key')
                if content["id"] not in provd.devices:
                    return self._text(404, "No such resource")
                provd.synchronized.append(content["id"])
                return self._send(201, headers={"Location": f"/provd/dev_mgr/synchronize/{len(provd.synchronized)}"})

        return Handler
