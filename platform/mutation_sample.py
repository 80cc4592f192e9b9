"""Reproducible sampled mutation testing: a fixed-seed draw per package, each drawn mutant run.

A full `make mutation` run takes hours on a small machine; a sample of a few hundred mutants
per package estimates each package's score, reported with a 95 % Wilson interval.

    python platform/mutation_sample.py run [--per-package 200] [--seed 17]
        [--packages quotas auth gateway] [--max-children 1]
    python platform/mutation_sample.py draw ...      print the names a `run` would draw
    python platform/mutation_sample.py report ...    the table for the last run of that draw
    python platform/mutation_sample.py run --survivors-only ...   after adding tests

`run` generates mutmut's mutants (platform/mutants/), draws N mutant names per package from
the *sorted* list of that package's mutants with `random.Random(seed)` (so a checkout of the
same source draws the same mutants, whatever order the files were walked in), runs exactly
those mutants (mutmut re-runs a mutant named on its command line even when it has a cached
verdict) and prints, per package: drawn, killed, survived, no tests, timeout, other, the
score and its 95 % Wilson confidence interval.

How each mutmut verdict counts (mutmut 3.8.1, `mutmut.stats.status_by_exit_code`):
- killed: the covering tests failed (pytest exit 1, or 3 for an internal error). Killed.
- timeout: the tests ran past mutmut's CPU limit (the mutant made them hang). Counted as
  killed, since a hanging suite fails CI too, but reported in its own column.
- survived: the covering tests passed. Not killed.
- no tests: no unit test reaches the mutated function (mutmut never runs it, exit 33), or
  pytest collected nothing (exit 5). Not killed: an untested mutant is a surviving one.
- not run (no verdict: the run was stopped before it) and other (suspicious, segfault,
  ...): not killed, reported so that a broken or cut run is visible instead of silently
  shrinking the sample.
The score is (killed + timeout) / drawn: every drawn mutant is in the denominator. Equivalent
mutants (no test can kill them) stay survivors here; list them by hand in the report.

Run from any directory; mutmut itself runs in platform/ (see setup.cfg). Needs mutmut 3.8.1
installed in the interpreter that runs this script (`make mutation` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PACKAGES = ("quotas", "auth", "gateway")
# mutmut's exit codes (mutmut.stats.status_by_exit_code), grouped as the docstring says.
KILLED_CODES = frozenset({1, 3})
SURVIVED_CODES = frozenset({0})
NO_TESTS_CODES = frozenset({5, 33})
TIMEOUT_CODES = frozenset({36, 24, -24, 152, 255})
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (both ends in [0, 1])."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def verdict(exit_code: int | None) -> str:
    """The column a mutmut exit code is counted in."""
    if exit_code is None:
        return "not run"
    if exit_code in KILLED_CODES:
        return "killed"
    if exit_code in SURVIVED_CODES:
        return "survived"
    if exit_code in NO_TESTS_CODES:
        return "no tests"
    if exit_code in TIMEOUT_CODES:
        return "timeout"
    return "other"


def _meta_files(root: Path) -> Iterable[Path]:
    return sorted((root / "mutants" / "llmplat").rglob("*.py.meta"))


def mutant_results(root: Path = HERE) -> dict[str, int | None]:
    """Every generated mutant's name and its last exit code (None: never run)."""
    results: dict[str, int | None] = {}
    for meta in _meta_files(root):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def draw(
    names: Iterable[str], packages: Sequence[str], per_package: int, seed: int
) -> dict[str, list[str]]:
    """Per package, `per_package` names drawn from the sorted pool with one seeded generator.

    The generator draws for every package of PACKAGES in that order, whichever are asked
    for, so a package's sample does not depend on which others are asked for with it.
    """
    ordered = sorted(set(names))
    rng = random.Random(seed)
    drawn: dict[str, list[str]] = {}
    for package in PACKAGES:
        pool = [n for n in ordered if n.startswith(f"llmplat.{package}.")]
        drawn[package] = sorted(rng.sample(pool, min(per_package, len(pool))))
    return {package: drawn[package] for package in packages}


def generate(max_children: int) -> None:
    """Write platform/mutants/ (mutated copies of the source paths and their .meta files).

    mutmut 3.8.1 has no command that only generates; these are the steps `mutmut run` starts
    with (mutmut.__main__._run), and `mutmut run` repeats them cheaply (unchanged functions
    keep their mutants and verdicts).
    """
    previous = Path.cwd()
    # mutmut reads its configuration (setup.cfg) from the working directory, once: import
    # it from there, and drop a configuration read before.
    os.chdir(HERE)
    try:
        from mutmut.__main__ import (  # noqa: PLC0415 - optional tool, imported when used
            copy_also_copy_files,
            copy_src_dir,
            create_mutants,
            set_mutant_under_test,
            setup_source_paths,
        )
        from mutmut.configuration import reset_config  # noqa: PLC0415

        reset_config()
        set_mutant_under_test("mutant_generation")
        (HERE / "mutants").mkdir(exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr):  # mutmut prints every file it copies
            copy_src_dir()
            copy_also_copy_files()
            setup_source_paths()
            create_mutants(max_children)
    finally:
        os.chdir(previous)
    link_tests()


def link_tests() -> None:
    """Link tests/unit's entries into platform/mutants.

    mutmut runs each mutant's tests from platform/mutants, naming them relative to
    tests/unit: without the links every test id is "not found" (pytest exit 4).
    """
    mutants = HERE / "mutants"
    for entry in sorted((REPO / "tests" / "unit").iterdir()):
        link = mutants / entry.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(entry)


def run_mutants(names: Sequence[str], max_children: int) -> int:
    """`mutmut run` on exactly these mutants; returns its exit status. The environment comes
    from `make mutation`: PYTHONPATH names the source tree (tests that start `python -m
    llmplat` need it; mutmut puts platform/mutants on its own sys.path only), and the
    config and load-test folders."""
    command = [sys.executable, __file__, "mutmut-run", "--max-children", str(max_children), *names]
    return subprocess.run(command, cwd=HERE, check=False).returncode


class _SnapshotSet(set):  # type: ignore[type-arg]
    """A set whose iteration walks a copy (taken atomically, under the GIL)."""

    def __iter__(self) -> Iterator[str]:
        return iter(set.copy(self))


def mutmut_run(argv: Sequence[str]) -> int:
    """`mutmut run ARGV` in this process, with one fix to mutmut 3.8.1's stats collection.

    While collecting which tests reach which functions, mutmut iterates the set of
    functions a test reached in its pytest teardown hook, while code the test left running
    in other threads (the gateway's worker threads) may still add to it: "Set changed size
    during iteration" stops the run. Iterating a copy fixes it.
    """
    from mutmut.__main__ import cli  # noqa: PLC0415 - optional tool, imported when used
    from mutmut.state import state  # noqa: PLC0415

    os.chdir(HERE)
    state()._stats = _SnapshotSet()
    try:
        cli.main(args=["run", *argv], prog_name="mutmut", standalone_mode=True)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    return 0


def report(drawn: dict[str, list[str]], results: dict[str, int | None]) -> str:
    """The per-package table of the drawn mutants' verdicts."""
    columns = ("killed", "survived", "no tests", "timeout", "not run", "other")
    header = (
        f"{'package':<16}{'drawn':>6}"
        + "".join(f"{c:>10}" for c in columns)
        + f"{'score':>8}  95% CI (Wilson)"
    )
    lines = [header]
    for package, names in drawn.items():
        counts = Counter(verdict(results.get(name)) for name in names)
        detected = counts["killed"] + counts["timeout"]
        low, high = wilson_interval(detected, len(names))
        score = detected / len(names) if names else 0.0
        lines.append(
            f"{'llmplat.' + package:<16}{len(names):>6}"
            + "".join(f"{counts[c]:>10}" for c in columns)
            + f"{score:>8.1%}  [{low:.1%}, {high:.1%}]"
        )
    lines.append(
        "score = (killed + timeout) / drawn; survived, no tests, not run (a run stopped "
        "early) and other count against"
    )
    return "\n".join(lines)


def survivors(drawn: dict[str, list[str]], results: dict[str, int | None]) -> list[str]:
    """The drawn mutants that were not killed (for `mutmut show NAME`)."""
    return [
        f"{verdict(results.get(n)):<9} {n}"
        for names in drawn.values()
        for n in names
        if verdict(results.get(n)) not in ("killed", "timeout")
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "draw", "report"))
    parser.add_argument("--per-package", type=int, default=200)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--packages", nargs="+", default=list(PACKAGES), choices=PACKAGES)
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument(
        "--survivors-only",
        action="store_true",
        help="run only the drawn mutants the last run ran and did not kill (survived, no "
        "tests): after adding tests, since a killed mutant stays killed; mutants never run "
        "stay so",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mutmut-run"]:  # internal: run_mutants' child process
        return mutmut_run(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "run" or not (HERE / "mutants").is_dir():
        generate(args.max_children)
    drawn = draw(mutant_results(), args.packages, args.per_package, args.seed)
    if args.command == "draw":
        print("\n".join(n for names in drawn.values() for n in names))
        return 0
    status = 0
    if args.command == "run":
        names = [n for names in drawn.values() for n in names]
        if args.survivors_only:
            last = mutant_results()
            names = [n for n in names if verdict(last.get(n)) in ("survived", "no tests")]
        status = run_mutants(names, args.max_children) if names else 0
    results = mutant_results()
    print(report(drawn, results))
    left = survivors(drawn, results)
    if left:
        print("\nnot killed (see `cd platform && mutmut show NAME`):")
        print("\n".join(left))
    return status


if __name__ == "__main__":
    sys.exit(main())
