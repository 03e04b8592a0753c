"""Stripe usage reporting: Billing Meters (v1 events or the v2 stream), legacy usage records,
period-end reports from subscription webhooks, and reconciliation. Never imports FastAPI."""
