"""`python -m watcher` is the same program as `deposit-watcher`."""

import sys

from watcher.cli import main

sys.exit(main())
