"""Customer portal: tokens that let one customer read its own usage, and nothing else.

`service.py` holds the service and its errors, `sql.py` the token table. Nothing is imported here:
the store package loads `sql.py` for its table, and that must not pull in the service (and with it
billing) while the store is still loading.
"""
