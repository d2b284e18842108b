"""BUILD names every module and test file, and every file it names exists."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _named_files():
    text = (ROOT / "BUILD").read_text()
    return set(re.findall(r'"([\w/.\-]+\.py)"', text))


def test_every_python_file_is_named_in_build():
    existing = {
        str(p.relative_to(ROOT))
        for folder in ("tf_stfusion", "tests", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
    }
    missing = sorted(existing - _named_files())
    assert not missing, f"BUILD does not name: {missing}"


def test_every_file_named_in_build_exists():
    named = _named_files()
    assert named, "BUILD names no file"
    absent = sorted(f for f in named if not (ROOT / f).is_file())
    assert not absent, f"BUILD names files that do not exist: {absent}"
