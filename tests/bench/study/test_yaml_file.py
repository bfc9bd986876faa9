"""Reading a study file strictly and within bounds: size, nesting depth, alias expansion."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT, SMOKE

from bench.study.yaml_file import MAX_ALIAS_NODES, MAX_BYTES, MAX_DEPTH, YamlFileError, read_yaml

SMOKE_TEXT = SMOKE.read_text()


def list_bomb(levels: int = 9) -> list[str]:
    """Nested anchors, each aliased 9 times: ``levels`` lines standing for 9**levels values."""
    return ["&a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)
    ]


def map_bomb(levels: int = 9) -> list[str]:
    keys = ", ".join(f"k{j}: 1" for j in range(9))
    return [f"a0: &a0 {{{keys}}}"] + [
        f"a{i}: &a{i} {{{', '.join(f'k{j}: *a{i - 1}' for j in range(9))}}}" for i in range(1, levels + 1)
    ]


#: (study text, the message) of hostile files (alias bombs, deep nesting, a huge file), as a user writes them
HOSTILE = {
    # a list of nested aliases as the value of a string field: its error used to quote it whole
    "alias_bomb_list": (
        SMOKE_TEXT.replace(
            "description: ViT-PCM (max pooling) vs TKP-PCL on a few synthetic scenes, 2 epochs\n",
            "description:\n" + "".join(f"  - {line}\n" for line in list_bomb()),
        ),
        ":10:10: alias *a4: aliases expand to more than 100,000 values",
    ),
    # a mapping of nested aliases under a variant's train section: MemoryError after 44 s
    "alias_bomb_mapping": (
        SMOKE_TEXT.replace(
            "  tkp-pcl: {}\n", "  tkp-pcl: {}\n  x:\n    train:\n" + "".join(f"      {line}\n" for line in map_bomb())
        ),
        ":31:65: alias *a3: aliases expand to more than 100,000 values",
    ),
    "nested_10000": (
        SMOKE_TEXT.replace("seeds: [0]", "seeds: " + "[" * 10_000 + "]" * 10_000),
        f":25:71: nested deeper than {MAX_DEPTH} levels",
    ),
    "recursive_alias": (
        SMOKE_TEXT.replace("seeds: [0]", "seeds: &s [0, *s]"),
        ":25:15: alias *s inside the node &s it names",
    ),
    "file_50MB": (
        SMOKE_TEXT + "".join(f"# padding {i:08d} {'x' * 80}\n" for i in range(500_000)),
        ": 50,000,864 bytes, more than a study file may have (1,000,000; a study file is a few KB)",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_study_files_one_line_exit_2_bounded(tmp_path, case):
    """`bench run FILE` under a 1 GiB address space: one line, exit 2, in seconds, nothing written
    (before: a hang past 60 s at 3.1 GB, a MemoryError or RecursionError traceback, 30 s at 1 GB)."""
    text, message = HOSTILE[case]
    (tmp_path / "bad.yaml").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None), env.pop("BENCH_OPTUNA_STORAGE", None)
    code = "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
    code += "sys.argv = ['bench', 'run', 'bad.yaml']; runpy.run_module('bench.cli', run_name='__main__')"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("bench: error: bad.yaml") and message in lines[0], lines[0]
    assert elapsed < 30, elapsed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_limits_name_the_line_and_column(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n")
    with pytest.raises(YamlFileError, match=rf"s.yaml:1:{MAX_DEPTH + 3}: nested deeper than {MAX_DEPTH} levels"):
        read_yaml(path)
    path.write_text("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")  # the mapping is level 1
    assert read_yaml(path)["a"] is not None  # just within the bound
    path.write_text("a: &x [1, *x]\n")
    with pytest.raises(YamlFileError, match=r"s.yaml:1:11: alias \*x inside the node &x it names"):
        read_yaml(path)
    path.write_text("a: &x {k: [1]}\nb: {<<: *x, j: *x}\n")  # an alias inside a sibling, and a merge key: fine
    assert read_yaml(path) == {"a": {"k": [1]}, "b": {"k": [1], "j": {"k": [1]}}}


def test_alias_expansion_is_counted_not_the_file(tmp_path):
    """Aliases are fine until what they stand for passes the bound; values written out are not counted."""
    path = tmp_path / "s.yaml"
    path.write_text("\n".join(f"k{i}: {line}" for i, line in enumerate(list_bomb(4))) + "\n")  # 9**4 values
    assert len(read_yaml(path)["k4"]) == 9
    path.write_text("\n".join(f"k{i}: {line}" for i, line in enumerate(list_bomb(6))) + "\n")  # 9**6 > the bound
    with pytest.raises(
        YamlFileError, match=rf"s.yaml:6:10: alias \*a4: aliases expand to more than {MAX_ALIAS_NODES:,} values"
    ):
        read_yaml(path)
    path.write_text("v: [" + ", ".join(["1"] * 200_000) + "]\n")  # no aliases: bounded by the size alone
    assert len(read_yaml(path)["v"]) == 200_000


def test_size_limit_reads_no_more_than_the_limit(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * (MAX_BYTES - 6) + b"\n")
    assert read_yaml(path) == {"a": 1}
    path.write_bytes(b"a: 1\n" + b"#" * MAX_BYTES + b"\n")
    with pytest.raises(YamlFileError, match=f"s.yaml: {MAX_BYTES + 6:,} bytes, more than a study file may have"):
        read_yaml(path)
