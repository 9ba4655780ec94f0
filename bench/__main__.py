"""`make bench`: run every benchmark in this folder, one after another, each printing its own table."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    for mod in sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_")):
        print(f"\n== {mod}", flush=True)
        importlib.import_module(f"bench.{mod}").main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
