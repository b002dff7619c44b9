"""`python -m devnet` runs the local demo (devnet.demo); it is what `make demo` runs."""

import sys

from devnet.demo import main

sys.exit(main())
