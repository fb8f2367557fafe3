"""`python -m embedscale`: the `embedscale` command, for environments without its script on PATH."""

import sys

from embedscale.api.cli.main import main

if __name__ == "__main__":
    sys.exit(main())  # the command's exit status, as the console script's
