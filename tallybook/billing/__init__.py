"""Pricing, plans, subscriptions and invoices. Rating is pure functions over Decimal."""
