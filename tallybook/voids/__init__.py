"""Voiding and amending stored events, with an audit trail (see README.md)."""
