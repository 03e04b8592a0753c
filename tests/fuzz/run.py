"""The fuzz job (`make fuzz`, run by .ci/run): schemathesis against a live `tallybook serve`.

For each database (SQLite, and PostgreSQL unless --sqlite-only) it starts the real server on a new
database with the demo data (meters, customers, a month of events, plans, subscriptions, invoices),
creates an admin, a read and an ingest key and a portal token, and runs schemathesis from
/openapi.json in passes:

- admin key: every operation (except the three that take a portal token), the deepest pass;
- read key and ingest key: every API-key operation, fewer cases (auth answers and reads);
- portal token: the token holder's operations.

Path parameters are drawn from the ids that exist (a schemathesis dictionary built from the demo
data) part of the time, so fuzzing reaches past 404. A run fails on any 5xx, any answer whose status,
content type, headers or body the OpenAPI document does not declare. It prints the number of
requests and failures per pass and in total. Deterministic: fixed seed, one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
POSTGRES_ADMIN_URL = os.environ.get("TALLYBOOK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Everything an answer can get wrong against the document. Not `positive_data_acceptance` (a valid
# request may rightly get 404/409 for the state it finds) nor `negative_data_rejection` (several
# bodies are documented more loosely than the server checks them, e.g. plan prices).
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)
PORTAL_HOLDER_PATHS = "^/api/v1/portal/(me|invoice-estimate|entitlements|meters/)"
# Where SQLite and PostgreSQL can answer differently: events stored, and the queries that read them.
ENGINE_SENSITIVE_PATHS = (
    "^/(api/v1/events|api/v2/events|usage/|usagebatch|events|aggregations"
    "|api/v1/meters/[^/]+/(query|subjects|group-by/)|api/v1/notification/events)"
)
# Operations left out of every pass, each for a reason:
# - POST /api/v1/jobs/run runs every background job synchronously (period close, invoicing, Stripe
#   reports, webhook delivery); hundreds of runs would spend the budget on a few operations. The
#   jobs are exercised by their own tests; GET /api/v1/jobs is fuzzed.
EXCLUDED_OPERATION_IDS = ("run_jobs_api_v1_jobs_run_post",)
PATH_DICTIONARY_PROBABILITY = 0.7


@dataclass
class Pass:
    name: str
    credential: str
    max_examples: int
    phases: str = "examples,coverage,fuzzing"
    include_path_regex: str | None = None
    exclude_path_regex: str | None = None


@dataclass
class Outcome:
    database: str
    name: str
    requests: int
    failures: int
    server_errors: int
    seconds: float
    exit_code: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def no_config_env() -> dict[str, str]:
    """No config file: commands run in a new directory and TALLYBOOK_CONFIG is dropped."""
    return {k: v for k, v in os.environ.items() if k != "TALLYBOOK_CONFIG"}


def create_keys(database_url: str) -> dict[str, str]:
    """An admin, a read and an ingest key (created in the store, as `tallybook keys create` does)."""
    from tallybook.config import DatabaseSettings, Settings
    from tallybook.runtime import Runtime

    runtime = Runtime.build(Settings(database=DatabaseSettings(url=database_url)))
    try:
        return {scope: runtime.keys.create(f"fuzz {scope}", scope).plaintext for scope in ("admin", "read", "ingest")}
    finally:
        runtime.store.close()


class Server:
    """`tallybook serve --demo` in a subprocess, its output in a log file."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(BIN / "tallybook"), "serve", "--demo", "--database", database_url, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=no_config_env(),
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{tail}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not get ready in {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def server_errors_logged(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if '"level":"ERROR"' in line.replace(" ", "")]


def known_ids(base_url: str, admin_key: str) -> dict[str, list[str]]:
    """Ids and keys of what the demo data created, per path-parameter name."""
    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)

    def items(path: str) -> list[dict[str, Any]]:
        body = client.get(path).raise_for_status().json()
        found: list[dict[str, Any]] = body if isinstance(body, list) else body["items"]
        return found

    meters = items("/api/v1/meters")
    customers = items("/api/v1/customers")
    plans = items("/api/v1/plans")
    customer_ids = [c["id"] for c in customers] + [c["key"] for c in customers if c.get("key")]
    plan_ids = [p["id"] for p in plans] + sorted({p["key"] for p in plans})
    ids = {
        "meterIdOrSlug": [m["id"] for m in meters] + [m["slug"] for m in meters],
        "meterSlug": [m["slug"] for m in meters],
        "customerIdOrKey": customer_ids,
        "customerId": customer_ids,
        "planId": plan_ids,
        "planIdOrKey": plan_ids,
        "subscriptionId": [s["id"] for s in items("/api/v1/subscriptions")],
        "invoiceId": [i["id"] for i in items("/api/v1/billing/invoices")],
        "profileId": [p["id"] for p in items("/api/v1/billing/profiles")],
    }
    return {name: values for name, values in ids.items() if values}


def write_config(path: Path, ids: dict[str, list[str]]) -> None:
    """A schemathesis.toml: path parameters drawn from `ids` part of the time."""
    lines: list[str] = []
    for name, values in ids.items():
        lines.append(f"[dictionaries.{name}]")
        lines.append(f"values = {json.dumps(values)}")
        lines.append("")
    lines.append("[parameters]")
    for name in ids:
        lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = {PATH_DICTIONARY_PROBABILITY} }}')
    path.write_text("\n".join(lines) + "\n")


def run_pass(base_url: str, config: Path, workdir: Path, database: str, spec: Pass, seed: int) -> Outcome:
    report = workdir / f"{database}-{spec.name}.json"
    command = [
        str(BIN / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {spec.credential}",
        "--checks",
        CHECKS,
        "--phases",
        spec.phases,
        "--max-examples",
        str(spec.max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--warnings",
        "off",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    for operation_id in EXCLUDED_OPERATION_IDS:
        command += ["--exclude-operation-id", operation_id]
    if spec.include_path_regex:
        command += ["--include-path-regex", spec.include_path_regex]
    if spec.exclude_path_regex:
        command += ["--exclude-path-regex", spec.exclude_path_regex]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    requests, failures, server_errors = summarize(report, output)
    if done.returncode != 0:
        print(output[-20000:], flush=True)
    return Outcome(database, spec.name, requests, failures, server_errors, seconds, done.returncode)


def summarize(report: Path, output: str) -> tuple[int, int, int]:
    """(requests, failures, server errors) from schemathesis's JSON report."""
    if not report.exists():
        print(output[-5000:], flush=True)
        raise RuntimeError("schemathesis wrote no report")
    data = json.loads(report.read_text())
    failures = data.get("failures", [])
    server_errors = sum(f["count"] for f in failures if f.get("code") == "ST101")
    unique = data["test_cases"]["unique_failures"] + len(data.get("errors", []))
    return data["test_cases"]["generated"], unique, server_errors


def passes(database: str, keys: dict[str, str], portal_token: str, scale: float) -> list[Pass]:
    """The passes against one database; `scale` multiplies the fuzzed cases per operation.

    On SQLite the admin pass goes deep: the coverage phase (boundary and invalid values of every
    parameter and body field) and fuzzing. The read and ingest passes fuzz a few cases per operation
    (most answers are 403). On PostgreSQL, within the budget, the coverage phase runs on the
    operations where the engines can differ (what is stored and queried), then everything is fuzzed.
    """

    def n(examples: int) -> int:
        return max(1, round(examples * scale))

    holder = {"exclude_path_regex": PORTAL_HOLDER_PATHS}
    if database == "sqlite":
        admin = [Pass("admin", keys["admin"], n(20), **holder)]
    else:
        admin = [
            Pass("coverage", keys["admin"], 1, phases="coverage", include_path_regex=ENGINE_SENSITIVE_PATHS),
            Pass("admin", keys["admin"], n(6), phases="examples,fuzzing", **holder),
        ]
    return [
        *admin,
        Pass("read", keys["read"], n(3), phases="fuzzing", **holder),
        Pass("ingest", keys["ingest"], n(3), phases="fuzzing", **holder),
        Pass("portal", portal_token, n(25), include_path_regex=PORTAL_HOLDER_PATHS),
    ]


def portal_token_for(base_url: str, admin_key: str, customer: str) -> str:
    answer = httpx.post(
        f"{base_url}/api/v1/portal/tokens",
        headers={"Authorization": f"Bearer {admin_key}"},
        json={"customerId": customer},
        timeout=30,
    ).raise_for_status()
    token: str = answer.json()["token"]
    return token


def fuzz_database(database: str, database_url: str, workdir: Path, seed: int, scale: float) -> list[Outcome]:
    """Serve a new database with the demo data and run every pass against it."""
    keys = create_keys(database_url)
    server = Server(database_url, workdir)
    outcomes: list[Outcome] = []
    try:
        server.wait_ready()
        config = workdir / "schemathesis.toml"
        write_config(config, known_ids(server.url, keys["admin"]))
        token = portal_token_for(server.url, keys["admin"], "acme")
        for spec in passes(database, keys, token, scale):
            outcome = run_pass(server.url, config, workdir, database, spec, seed)
            outcomes.append(outcome)
            print(
                f"fuzz {database:10} {spec.name:7} {outcome.requests:6} requests  {outcome.failures} failures  "
                f"{outcome.server_errors} server errors  ({outcome.seconds:.0f} s)",
                flush=True,
            )
    finally:
        server.stop()
    logged = server.server_errors_logged()
    if logged:
        print(f"fuzz {database}: the server logged {len(logged)} errors; the first:\n{logged[0][:4000]}", flush=True)
    return outcomes


def create_postgres_database() -> tuple[str, str]:
    import psycopg

    name = f"tallybook_fuzz_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite-only", action="store_true", help="skip the PostgreSQL run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the fuzzed cases per operation")
    parser.add_argument(
        "--postgres-scale",
        type=float,
        default=1.0,
        help="the same on PostgreSQL",
    )
    args = parser.parse_args()
    started = time.monotonic()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="tallybook-fuzz-") as tmp:
        sqlite_dir = Path(tmp) / "sqlite"
        sqlite_dir.mkdir()
        outcomes += fuzz_database(
            "sqlite", f"sqlite:///{sqlite_dir / 'tallybook.db'}", sqlite_dir, args.seed, args.scale
        )
        if not args.sqlite_only:
            pg_dir = Path(tmp) / "postgresql"
            pg_dir.mkdir()
            name, url = create_postgres_database()
            try:
                outcomes += fuzz_database("postgresql", url, pg_dir, args.seed, args.scale * args.postgres_scale)
            finally:
                drop_postgres_database(name)
    requests = sum(o.requests for o in outcomes)
    failures = sum(o.failures for o in outcomes)
    server_errors = sum(o.server_errors for o in outcomes)
    print(
        f"fuzz total: {requests} requests, {failures} failures, {server_errors} server errors "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return 0 if failures == 0 and all(o.exit_code == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
