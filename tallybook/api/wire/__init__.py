"""Wire shapes: pydantic models of what the HTTP API sends and receives, one module per domain.

They document the API (the OpenAPI document at /openapi.json is built from them) and field names
follow OpenMeter's spec where it defines the same shape. Routes still render with the domain's
`*_json` functions; the fuzz job (`make fuzz`) checks every answer against these models.
"""
