"""Signed webhooks: channels and rules, the durable outbox, and its delivery worker."""
