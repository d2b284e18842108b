"""The README's commands are the ones CI and users run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 30, "README must open with the commands block"
    return [l for l in block.group(1).splitlines() if l.strip()]


def test_readme_opens_with_two_commands():
    main, tests = _readme_commands()
    assert "tf_stfusion.train" in main and "--flagfile=demo.flags" in main
    assert "pytest" in tests
    flagfile = re.search(r"--flagfile=(\S+)", main).group(1)
    from tf_stfusion import configs

    assert configs.path(flagfile) and not (ROOT / flagfile).exists()  # the packaged file, found by name


def test_ci_runs_the_readme_test_command():
    _, tests = _readme_commands()
    test_cmd = tests.split("&&")[-1].strip()
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
