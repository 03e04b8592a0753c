"""OpenMeter's filter objects: parsing (model.py) and SQL translation (sql.py)."""
