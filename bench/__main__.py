"""Entry point of `python -m bench`; see `bench.run` for the options."""

import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main())
