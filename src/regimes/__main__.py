import sys

from regimes.cli import main

sys.exit(main())
