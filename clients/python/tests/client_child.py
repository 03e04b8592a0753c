"""A client process for the kill -9 test: `track` events with a spool, or drain the spool.

    python client_child.py track URL KEY SPOOL EVENT_TYPE SIDE_FILE COUNT   (COUNT 0: until killed)
    python client_child.py drain URL KEY SPOOL

`track` writes each id to SIDE_FILE after `track` returned for it (so the file lists events the
client had accepted) and says "tracking" on stdout after the first 200.
"""

from __future__ import annotations

import itertools
import sys

from tallybook_client import Tallybook


def main() -> int:
    mode, url, key, spool = sys.argv[1:5]
    if mode == "drain":
        tb = Tallybook(url, key, spool=spool)
        drained = tb.flush(timeout=60)
        tb.close()
        print("drained" if drained else "not drained", flush=True)
        return 0 if drained else 1
    event_type, side_file, count = sys.argv[5], sys.argv[6], int(sys.argv[7])
    tb = Tallybook(url, key, spool=spool, batch_size=100, flush_interval=0.01)
    with open(side_file, "w", buffering=1) as side:
        for n in itertools.count() if count == 0 else range(count):
            event_id = tb.track(event_type, f"customer-{n % 7}", {"n": n})
            side.write(event_id + "\n")  # a write() per line: in the kernel before the next track
            if n == 200:
                print("tracking", flush=True)
    print("finished", flush=True)
    sys.stdin.read()  # wait to be killed
    return 0


if __name__ == "__main__":
    sys.exit(main())
