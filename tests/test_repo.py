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


def test_every_benchmark_prints_the_shared_machine_line():
    import importlib.util
    import os
    import platform
    import subprocess
    import sys

    spec = importlib.util.spec_from_file_location("machine", ROOT / "benchmarks" / "machine.py")
    machine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(machine)
    # TensorFlow not imported by the benchmark: no GPU count (none is guessed), versions as given
    code = ("import sys; sys.path.insert(0, 'benchmarks'); from machine import machine_line; "
            "print(machine_line(Foo='1.2')); print('tensorflow' in sys.modules)")
    line, tf_loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout.splitlines()
    assert tf_loaded == "False" and "GPUs" not in line
    assert line.startswith("machine: ") and line.endswith(f"; Python {platform.python_version()}, Foo 1.2")
    assert f"{os.cpu_count()} CPU cores ({machine.cpu_model()}, {platform.machine()})" in line
    import tensorflow as tf  # imported: the GPUs TensorFlow sees are counted

    assert f", GPUs: {len(tf.config.list_physical_devices('GPU'))}" in machine.machine_line()
    # Every script (helper modules like machine.py and videos.py are imported, not run).
    scripts = [p for p in (ROOT / "benchmarks").glob("*.py") if '__name__ == "__main__"' in p.read_text()]
    assert scripts and all("print(machine_line(" in p.read_text() or "{machine_line()}" in p.read_text()
                           for p in scripts)


def _anchors(markdown):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as '-', repeats numbered."""
    seen, anchors = {}, set()
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)  # a '#' comment in a code block is no heading
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_relative_link_resolves():
    pages = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no heading with that anchor")
    assert not broken, "\n".join(broken)
