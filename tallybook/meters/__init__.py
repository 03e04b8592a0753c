"""Meters: definitions, the event projection behind them, and usage queries (no web code here)."""
