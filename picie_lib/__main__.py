import sys

from picie_lib.cli import main

sys.exit(main())
