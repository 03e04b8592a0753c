"""Customer portal: tokens that let one customer read its own usage, and nothing else.

`model.py` holds the token row and the portal's error, `ports.py` what the service needs from
storage, `service.py` the service, `sql.py` the token table and its adapter. Nothing is imported here:
the store package loads `sql.py` for its table, and that must not pull in the service (and with it
billing) while the store is still loading.
"""
