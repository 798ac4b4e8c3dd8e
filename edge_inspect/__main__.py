import sys

from edge_inspect.cli import main

sys.exit(main())
