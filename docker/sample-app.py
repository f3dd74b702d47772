"""The sample app of docker/compose.yaml: a chat whose messages clients used to poll."""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

MESSAGES = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/messages":
            return self.answer(404, {"error": "not found"})
        self.answer(200, MESSAGES)

    def do_POST(self):
        if self.path != "/send":
            return self.answer(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        MESSAGES.append({"text": form.get("text", [""])[0]})
        self.answer(200, {"ok": True})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
