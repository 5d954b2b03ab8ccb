import sys

from picie_lib.cli import main

if __name__ == "__main__":  # not again in a worker process
    sys.exit(main())
