import sys

from mcls.cli import main

sys.exit(main())
