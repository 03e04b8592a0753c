"""Entitlements: features, grants and access (OpenMeter\x27s shapes); see README.md."""
