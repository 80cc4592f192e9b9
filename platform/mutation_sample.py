"""Print a seeded random sample of mutmut's mutants, the same number per package.

A full `make mutation` run takes hours on a small machine; a sample of a few hundred gives
each package's score within a few points. Needs `platform/mutants/` (made by any
`make mutation` run). Usage: ``python platform/mutation_sample.py [PER_PACKAGE] [SEED]``.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

PACKAGES = ("quotas", "auth", "gateway")


def main(per_package: int = 150, seed: int = 17) -> None:
    here = Path(__file__).resolve().parent
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=here,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = [line.split(":")[0].strip() for line in listing.splitlines() if ":" in line]
    rng = random.Random(seed)
    for package in PACKAGES:
        pool = [n for n in names if n.startswith(f"llmplat.{package}.")]
        for name in rng.sample(pool, min(per_package, len(pool))):
            print(name)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
