"""The Stripe room: usage reporting (Billing Meters, the v2 stream, legacy usage records), invoice and
credit note sync, Checkout onboarding, the signed webhook and reconciliation. Never imports FastAPI;
see README.md for its shape."""
