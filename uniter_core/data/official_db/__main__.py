"""`python -m uniter_core.data.official_db ...` runs the converter (convert.py), as it did as one module."""
import os
import sys

from uniter_core.cli import exit_with

from .convert import main

if __name__ == "__main__":
    # argparse names the program after argv[0]: keep `official_db.py` (not `__main__.py`) in usage and error lines
    sys.argv[0] = os.path.dirname(__file__) + ".py"
    exit_with(main())
