"""The test service of tests/roles.rs: answers GET with what it was started with, as JSON.

The secret is reported as its sha256, never as itself.
"""
import hashlib
import http.server
import json
import os
import pwd
import sys

with open("VERSION") as f:
    VERSION = f.read().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        secret = os.environ.get("DB_PASSWORD", "")
        body = json.dumps(
            {
                "version": VERSION,
                "instance": os.environ.get("PIPELINE_INSTANCE"),
                "release": os.environ.get("PIPELINE_RELEASE"),
                "port": os.environ.get("PORT"),
                "greeting": os.environ.get("GREETING"),
                "extra": os.environ.get("EXTRA"),
                "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(),
                "argv": sys.argv[1:],
                "cwd": os.getcwd(),
                "user": pwd.getpwuid(os.getuid()).pw_name,
                "pid": os.getpid(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


port = int(os.environ["PORT"])
print(f"app {VERSION} listening on {port}", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
