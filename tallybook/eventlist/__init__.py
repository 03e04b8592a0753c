"""Listing stored events with OpenMeter's filters and cursor pagination (see README.md)."""
