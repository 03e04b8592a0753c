"""One HTTP request per batch, and what its answer means for the events in it."""

from __future__ import annotations

import gzip as _gzip
import json
import logging
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from tallybook_client._events import join_batch

log = logging.getLogger("tallybook_client")
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
Verdict = Literal["acknowledged", "invalid", "too_large", "retry"]


@dataclass(slots=True)
class Outcome:
    """acknowledged: 2xx, every event is committed. invalid: 400 problem+json, nothing stored;
    `invalid` maps batch positions to their problems. too_large: 413. retry: anything else
    (network error, timeout, 429, 5xx, 401/403/404 from a misconfiguration): send again later."""

    verdict: Verdict
    status: int | None = None
    problem: dict[str, Any] = field(default_factory=dict)
    invalid: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    retry_after: float | None = None
    error: str = ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except ValueError:
        return {"status": response.status_code, "detail": response.text[:500]}
    return body if isinstance(body, dict) else {"status": response.status_code, "detail": body}


def outcome_of(response: httpx.Response, batch_size: int) -> Outcome:
    status = response.status_code
    if 200 <= status < 300:
        return Outcome("acknowledged", status)
    problem = _problem_of(response)
    if status == 413:
        return Outcome("too_large", status, problem)
    is_problem = response.headers.get("content-type", "").startswith("application/problem+json")
    if status == 400 and is_problem:
        invalid: dict[int, list[dict[str, Any]]] = {}
        for error in problem.get("errors") or []:
            index = error.get("index") if isinstance(error, dict) else None
            if isinstance(index, int) and 0 <= index < batch_size:
                invalid.setdefault(index, []).append(error)
        return Outcome("invalid", status, problem, invalid)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    detail = str(problem.get("detail") or problem.get("title") or "")
    return Outcome("retry", status, problem, retry_after=retry_after, error=f"HTTP {status} {detail}".strip())


def _refused_compression(outcome: Outcome) -> bool:
    return outcome.status == 415 or (outcome.verdict == "invalid" and not outcome.invalid)


class Sender:
    """POSTs batches to /api/v1/events; owns the HTTP connection pool (re-made after fork)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        gzip: bool,
        http_transport: httpx.BaseTransport | None,
        user_agent: str,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.gzip = gzip
        self._timeout = timeout
        self._http_transport = http_transport
        self._headers = {"User-Agent": user_agent}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.http = self._client()

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 5.0)),
            transport=self._http_transport,
        )

    def send(self, bodies: list[bytes]) -> Outcome:
        if self.gzip:
            outcome = self._post(bodies, compress=True)
            if not _refused_compression(outcome):
                return outcome
            # A server that does not decode Content-Encoding reads gzip bytes as malformed JSON (or
            # refuses the encoding); the events are fine, so stop compressing and send them plainly.
            log.warning("tallybook: the server refused a gzip body (HTTP %s); sending uncompressed", outcome.status)
            self.gzip = False
        return self._post(bodies, compress=False)

    def _post(self, bodies: list[bytes], compress: bool) -> Outcome:
        payload = join_batch(bodies)
        headers = {"Content-Type": BATCH_CONTENT_TYPE}
        if compress:
            payload = _gzip.compress(payload, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self.http.post("/api/v1/events", content=payload, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome("retry", error=f"{type(exc).__name__}: {exc}")
        return outcome_of(response, len(bodies))

    def after_fork_in_child(self) -> None:
        # The parent's pooled sockets are shared with the child; a new pool keeps them apart.
        self._abandoned = self.http
        self.http = self._client()

    def close(self) -> None:
        self.http.close()
