"""The benchmark a user runs on candidate hardware; the same as `edge-inspect bench`.

    python benchmarks/bench.py [--model M ...] [--out bench-output] [--runs 200] [--threads N]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_inspect.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
