"""Tallybook: self-hosted usage metering and billing."""

__version__ = "0.1.0"
