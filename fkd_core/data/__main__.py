"""python -m fkd_core.data describe PATH [--json] [--cache DIR] [--groups auto|none|CSV]"""
import sys

from fkd_core.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
