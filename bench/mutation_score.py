"""Kill rates of ``mutmut run`` (``make mutate``), per module: what share of the mutants the
tests caught. A mutant the tests time out on counts as caught; one no test reaches does not.

Usage: ``.venv/bin/python bench/mutation_score.py [--floor 0.85]`` after ``mutmut run``;
exit 1 when a module's rate is below the floor.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAUGHT = {"killed", "timeout"}


def outcomes() -> dict[str, Counter[str]]:
    """{module: {status: count}} from ``mutmut results --all true``."""
    listed = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mutmut"), "results", "--all", "true"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    per_module: dict[str, Counter[str]] = defaultdict(Counter)
    for line in listed.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if "__mutmut_" not in name:
            continue
        function = name.partition("__mutmut_")[0]
        module = ".".join(part for part in function.split(".") if not part.startswith("x"))
        per_module[module][status] += 1
    return per_module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floor", type=float, default=0.85)
    args = parser.parse_args()
    per_module = outcomes()
    print("| module | mutants | caught | survived | no test | kill rate |")
    print("|---|---:|---:|---:|---:|---:|")
    below = []
    total: Counter[str] = Counter()
    for module, counts in sorted(per_module.items()):
        total.update(counts)
        mutants = sum(counts.values())
        caught = sum(counts[s] for s in CAUGHT)
        rate = caught / mutants
        print(f"| `{module}` | {mutants} | {caught} | {counts['survived']} "
              f"| {counts['no tests']} | {rate:.0%} |")  # fmt: skip
        if rate < args.floor:
            below.append(module)
    mutants = sum(total.values())
    caught = sum(total[s] for s in CAUGHT)
    print(f"| all | {mutants} | {caught} | {total['survived']} | {total['no tests']} "
          f"| {caught / max(mutants, 1):.0%} |")  # fmt: skip
    if below:
        print(f"below {args.floor:.0%}: {', '.join(below)}", file=sys.stderr)
    return 1 if below else 0


if __name__ == "__main__":
    raise SystemExit(main())
