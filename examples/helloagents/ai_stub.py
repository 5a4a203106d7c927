"""A stand-in for the AI service: ``python -m helloagents.ai_stub --port N``.

``POST /v1/complete`` with a bearer key answers ``{"answer": ...}``; a prompt asking to
"think hard" takes 1.2 s, as a real model's long answer does. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            self._answer(401, {"error": "missing API key"})
            return
        prompt = str(body.get("prompt", ""))
        if "think hard" in prompt:
            time.sleep(1.2)
        self._answer(200, {"answer": f"{body.get('agent', 'agent')} says: {prompt[::-1]}"})

    def _answer(self, status: int, payload: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(json.dumps({"event": "ai_stub_started", "port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
