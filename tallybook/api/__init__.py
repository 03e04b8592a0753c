"""The HTTP API (FastAPI). It translates HTTP to calls on the domain services and back."""
