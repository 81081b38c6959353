"""`python -m benchmarks`: the whole benchmark, one table (see `--help`)."""

import sys

from benchmarks.run import main

if __name__ == "__main__":
    sys.exit(main())
