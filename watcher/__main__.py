"""`python -m watcher` is the same program as `deposit-watcher`."""

import sys

from watcher.cli import main

# Guarded: the start-up's helper process (watcher/watchload.py, multiprocessing "spawn") imports the main
# module again; multiprocessing skips a package's __main__, and this guard keeps it safe anyway.
if __name__ == "__main__":
    sys.exit(main())
