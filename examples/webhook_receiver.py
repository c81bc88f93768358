"""A receiver for the bridge's end-of-call webhook: checks the signature, keeps each call once."""

import hashlib
import hmac
import json
import os
import time
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

SECRET = os.environ.get("BRIDGE_WEBHOOK_SECRET", "").encode()


def verified(headers: Message, body: bytes) -> bool:
    stamp = headers.get("X-Bridge-Timestamp", "")
    mac = hmac.new(SECRET, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = stamp.isdigit() and abs(time.time() - int(stamp)) < 300  # refuse replays
    return fresh and hmac.compare_digest("sha256=" + mac, headers.get("X-Bridge-Signature", ""))


class Receiver(BaseHTTPRequestHandler):
    seen: ClassVar[set[str]] = set()  # Idempotency-Key (the CallSid) of the records kept

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = verified(self.headers, body)
        key = self.headers.get("Idempotency-Key", "")
        if ok and key not in self.seen:
            self.seen.add(key)
            self.keep(json.loads(body))
        self.send_response(204 if ok else 401)
        self.end_headers()

    def keep(self, record: dict[str, Any]) -> None:
        print(record["call_sid"], record["end_reason"], len(record["turns"]), "turns")


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", 8080), Receiver).serve_forever()
