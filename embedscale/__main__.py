"""`python -m embedscale`: the `embedscale` command, for environments without its script on PATH."""

from embedscale.api.cli.main import main

if __name__ == "__main__":
    main()
