"""A tiny metered API: every request to /items is tracked as a billable `api.calls` event.

    python metered_api.py --url http://127.0.0.1:8888 --key tbk_… [--port 8000]
    python metered_api.py --url http://127.0.0.1:8888 --key tbk_… --demo 300

The app serves HTTP with the standard library (wsgiref); the customer is the `X-Customer` header.
`--demo N` runs the app on a free port, sends it N requests from three customers, then flushes the
client and prints each customer's usage read back from the server's `api_calls` meter (created if
missing). Events go through a spool in ./.tallybook-spool, so a crash of the app loses none.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
from tallybook_client import Tallybook


def make_app(tb: Tallybook):
    def app(environ, start_response):
        customer = environ.get("HTTP_X_CUSTOMER")
        if not customer:
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"send X-Customer\n"]
        started = time.perf_counter()
        body = json.dumps({"items": [1, 2, 3]}).encode()
        # One billable event per request; `track` only appends to the spool, so it adds ~µs.
        tb.track(
            "api.calls",
            subject=customer,
            data={"value": 1, "endpoint": environ["PATH_INFO"], "ms": round((time.perf_counter() - started) * 1e3, 3)},
        )
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def ensure_meter(url: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    if httpx.get(f"{url}/api/v1/meters/api_calls", headers=headers).status_code == 404:
        meter = {"slug": "api_calls", "aggregation": "SUM", "eventType": "api.calls", "valueProperty": "$.value"}
        httpx.post(f"{url}/api/v1/meters", json=meter, headers=headers).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--demo", type=int, metavar="N", help="send N requests to the app, report usage, exit")
    args = parser.parse_args()

    tb = Tallybook(args.url, args.key, spool=".tallybook-spool", source="metered-api-example")
    server = make_server("127.0.0.1", 0 if args.demo else args.port, make_app(tb), handler_class=QuietHandler)
    if not args.demo:
        print(f"serving on http://127.0.0.1:{server.server_port}/items (X-Customer: <key>)")
        server.serve_forever()
        return

    ensure_meter(args.url, args.key)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    customers = ["acme", "globex", "initech"]
    with httpx.Client(base_url=base) as http:
        for n in range(args.demo):
            http.get("/items", headers={"X-Customer": customers[n % 3]}).raise_for_status()
    server.shutdown()
    acknowledged = tb.flush(timeout=30)
    stats = tb.stats()
    print(f"{args.demo} requests served; all events acknowledged: {acknowledged}")
    print(f"client stats: sent={stats.sent} failed={stats.failed} spool_size={stats.spool_size}")
    usage = tb.query("api_calls", group_by=["subject"])
    for row in sorted(usage.rows, key=lambda r: r.subject or ""):
        print(f"  {row.subject:8} {row.value} api calls")
    tb.close()


if __name__ == "__main__":
    main()
