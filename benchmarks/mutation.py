"""Mutation score of the method's loss/pooling/metric modules and the report's statistics.

Runs ``mutmut`` (3.x, ``pip install -e ".[dev]"``) on one module at a time in a temporary copy
of the repository, with the fast tests that exercise that module, and prints killed / total per
module and every surviving mutant as a diff. Slow (minutes per module); not part of CI.

    python benchmarks/mutation.py                      # every module of MODULES
    python benchmarks/mutation.py tkp_pcl/stage1/pooling.py   # one module
    python benchmarks/mutation.py --existing-only      # only the tests not named *_values.py
                                                       # (the score before the value tests)

Modules move: MODULES is the only place that names them and their tests.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module path -> (test files or node ids, functions scored (None: all of the module)).
MODULES: dict[str, tuple[list[str], list[str] | None]] = {
    "tkp_pcl/stage1/pooling.py": (
        ["tests/tkp_pcl/stage1/test_pooling.py", "tests/tkp_pcl/stage1/test_pooling_values.py"],
        None,
    ),
    "tkp_pcl/stage1/losses.py": (
        ["tests/tkp_pcl/stage1/test_losses.py", "tests/tkp_pcl/stage1/test_losses_values.py"],
        None,
    ),
    "tkp_pcl/stage1/equivariance.py": (
        ["tests/tkp_pcl/stage1/test_augment.py", "tests/tkp_pcl/stage1/test_equivariance_values.py"],
        None,
    ),
    "tkp_pcl/stage1/objective.py": (["tests/tkp_pcl/stage1/test_objective_values.py"], None),
    "tkp_pcl/metrics.py": (["tests/tkp_pcl/test_metrics.py", "tests/tkp_pcl/test_metrics_values.py"], None),
    "bench/report/statistics.py": (
        [
            "tests/bench/report/test_statistics.py",
            "tests/bench/report/test_search_sections.py",
            "tests/bench/report/test_statistics_values.py",
        ],
        ["summary", "paired", "_baseline_group"],
    ),
}
#: copied beside the module into the sandbox (imports, conftest, study files the tests read)
ALSO_COPY = ["tkp_pcl", "bench", "tests", "studies", "pyproject.toml"]
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def mutmut_config(module: str, tests: list[str]) -> str:
    q = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"  # noqa: E731
    return (
        f"\n[tool.mutmut]\nsource_paths = {q([module])}\n"
        f"pytest_add_cli_args_test_selection = {q(tests)}\n"
        f"pytest_add_cli_args = {q(['-p', 'no:cacheprovider', '-q', '-n', '0'])}\n"
        f"also_copy = {q([p for p in ALSO_COPY if p != 'pyproject.toml'])}\n"
    )


def run_module(module: str, tests: list[str], functions: list[str] | None, children: int) -> tuple[int, int, list[str]]:
    """(killed, total, surviving mutants as diffs) of ``module`` under ``tests``."""
    mutmut = Path(sys.executable).with_name("mutmut")
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        box = Path(tmp)
        for p in ALSO_COPY:
            src = ROOT / p
            if src.is_dir():
                shutil.copytree(src, box / p, ignore=shutil.ignore_patterns("__pycache__", "mutants"))
            elif src.exists():
                shutil.copy2(src, box / p)
        text = (box / "pyproject.toml").read_text()
        text = re.sub(r"\n\[tool\.mutmut\].*?(?=\n\[|\Z)", "", text, flags=re.S)
        (box / "pyproject.toml").write_text(text + mutmut_config(module, tests))
        subprocess.run(
            [str(mutmut), "run", "--max-children", str(children)],
            cwd=box,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=box, capture_output=True, text=True).stdout
        dotted = module.removesuffix(".py").replace("/", ".")
        killed = total = 0
        survivors = []
        for name, status in re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", out, flags=re.M):
            fn = re.match(rf"{re.escape(dotted)}\.x_(\w+)__mutmut_\d+$", name)
            if functions is not None and (fn is None or fn.group(1) not in functions):
                continue
            total += 1
            if status.strip() in KILLED:
                killed += 1
            else:
                diff = subprocess.run([str(mutmut), "show", name], cwd=box, capture_output=True, text=True).stdout
                lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
                survivors.append(f"{name} ({status.strip()}):\n    " + "\n    ".join(lines))
    return killed, total, survivors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help="module paths (keys of MODULES); default all")
    ap.add_argument("--existing-only", action="store_true", help="leave out the *_values.py tests")
    ap.add_argument("--children", type=int, default=2, help="parallel test processes")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    rows = []
    for module in args.modules or list(MODULES):
        tests, functions = MODULES[module]
        if args.existing_only:
            tests = [t for t in tests if not t.split("::")[0].endswith("_values.py")]
        if not tests:
            print(f"{module}: no tests")
            rows.append((module, 0, 0))
            continue
        killed, total, survivors = run_module(module, tests, functions, args.children)
        rows.append((module, killed, total))
        print(f"{module}: {killed}/{total} killed ({100 * killed / max(total, 1):.0f}%)", flush=True)
        for s in survivors:
            print("  survived " + s, flush=True)
    print("\n| module | killed | score |\n|---|---|---|")
    for module, killed, total in rows:
        print(f"| `{module}` | {killed}/{total} | {100 * killed / max(total, 1):.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
