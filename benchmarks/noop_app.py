"""A FastAPI app with one endpoint that reads the request body and answers 204: the ceiling for
single-event ingest on this server stack. benchmarks/ingest.py serves it with the uvicorn options
`tallybook serve` uses (uvloop, httptools, no access log) and sends it the same requests.

It also gets the garbage-collector tuning `tallybook serve` applies before it starts uvicorn
(`tune_gc_for_throughput`), so that the comparison measures the ingest work, not a GC setting."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from tallybook.cli.main import tune_gc_for_throughput

app = FastAPI()


@app.post("/noop", status_code=204)
async def noop(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)


tune_gc_for_throughput()
