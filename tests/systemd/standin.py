"""Stand-in for `t3 serve` in the system tests (t3 is not installed there).

Run by t3-serve@<user> through a test drop-in that replaces ExecStart; serves
on 127.0.0.1:$T3_PORT:
  GET /            {"uid": ..., "user": ..., "port": ..., "pid": ...}
  GET /write?path=P  tries to append to P as this process; {"ok": bool, "error": str}
"""

import json
import os
import pwd
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/write":
            path = parse_qs(url.query).get("path", [""])[0]
            try:
                with open(path, "a") as f:
                    f.write("written by uid %d\n" % os.getuid())
                body = {"ok": True, "error": ""}
            except OSError as e:
                body = {"ok": False, "error": "%s: %s" % (type(e).__name__, e.strerror)}
        else:
            uid = os.getuid()
            body = {"uid": uid, "user": pwd.getpwuid(uid).pw_name,
                    "port": int(os.environ["T3_PORT"]), "pid": os.getpid()}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["T3_PORT"])), Handler).serve_forever()
