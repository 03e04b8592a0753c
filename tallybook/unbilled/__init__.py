"""Unbilled usage: usage that no invoice will ever carry (see README.md)."""
