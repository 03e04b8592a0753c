"""A FastAPI app with one endpoint that reads the request body and answers 204: the ceiling for
single-event ingest on this server stack. benchmarks/ingest.py serves it with the uvicorn options
`tallybook serve` uses (uvloop, httptools, no access log) and sends it the same requests."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/noop", status_code=204)
async def noop(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)
