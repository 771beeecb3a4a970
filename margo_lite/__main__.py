import sys

from margo_lite.cli import main

sys.exit(main())
