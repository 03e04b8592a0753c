"""`AsyncTallybook`: the same client for asyncio apps.

Tracking and sending share `Tallybook`'s machinery (the spool, the batching sender thread), so the
guarantees are the same. `track` is cheap and does not touch the network; it only leaves the event
loop (a worker thread) when it would otherwise block: sync_mode, or overflow="block" on a full queue.
Reads use an `httpx.AsyncClient`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import httpx

from tallybook_client import _reads
from tallybook_client._buffer import DeadLetter
from tallybook_client._dispatch import Stats
from tallybook_client._reads import EntitlementValue, MeterQueryResult
from tallybook_client.client import USER_AGENT, Tallybook


class AsyncTallybook:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        async_http_transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        **options: Any,
    ) -> None:
        self.core = Tallybook(url, api_key, timeout=timeout, **options)
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=async_http_transport
        )

    def _may_block(self) -> bool:
        memory = self.core._memory
        if self.core.sync_mode or (self.core.spool is not None and self.core.spool.synchronous == "full"):
            return True  # waits on the network, or on an fsync per event
        return memory is not None and memory.overflow == "block" and memory.depth() >= memory.max_events

    async def track(
        self,
        type: str,
        subject: str,
        data: dict[str, Any] | None = None,
        *,
        time: datetime | None = None,
        id: str | None = None,
    ) -> str:
        """Queue one event and return its id (see Tallybook.track)."""
        if self._may_block():
            return await asyncio.to_thread(self.core.track, type, subject, data, time=time, id=id)
        return self.core.track(type, subject, data, time=time, id=id)

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.core.flush, timeout)

    async def close(self, timeout: float | None = 10.0) -> bool:
        try:
            return await asyncio.to_thread(self.core.close, timeout)
        finally:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncTallybook:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def query(
        self,
        meter: str,
        *,
        from_: datetime | str | None = None,
        to: datetime | str | None = None,
        window_size: str | None = None,
        window_time_zone: str | None = None,
        subject: Iterable[str] = (),
        customer_id: Iterable[str] = (),
        group_by: Iterable[str] = (),
        filter_group_by: Mapping[str, str] | None = None,
        as_of: datetime | str | None = None,
    ) -> MeterQueryResult:
        params = _reads.meter_query_params(
            from_=from_,
            to=to,
            window_size=window_size,
            window_time_zone=window_time_zone,
            subject=subject,
            customer_id=customer_id,
            group_by=group_by,
            filter_group_by=filter_group_by,
            as_of=as_of,
        )
        response = await self._http.get(_reads.meter_query_path(meter), params=params)
        return _reads.parse_meter_query(response)

    async def entitlement_value(
        self, customer: str, feature: str, *, time: datetime | str | None = None
    ) -> EntitlementValue:
        params = {"time": _reads._time(time)} if time is not None else None
        response = await self._http.get(_reads.entitlement_value_path(customer, feature), params=params)
        return _reads.parse_entitlement_value(response)

    def stats(self) -> Stats:
        return self.core.stats()

    def dead_letters(self) -> list[DeadLetter]:
        return self.core.dead_letters()

    def requeue_dead_letters(self, seqs: Iterable[int] | None = None) -> int:
        return self.core.requeue_dead_letters(seqs)
