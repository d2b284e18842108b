"""The package's layering (``.importlinter``) holds: dependencies point down the
data flow, and the search and the export do not import the trainer."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept():
    script = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run([sys.executable, "-c", script, "--no-cache", os.path.join(REPO, ".importlinter")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


# The files of a run folder (tf_stfusion/run/folder.py names each one once).
RUN_FOLDER_FILES = ("run.json", "holdout.json", "done.json", "preflight.json", "probabilities.json", "metrics.json",
                    "best.json")


def _path_literals(path):
    """``(line, text)`` of the string literals in ``path`` that are a run-folder file
    name, alone or at the end of a path (prose in docstrings and messages is not)."""
    import tokenize

    found = []
    with open(path, "rb") as f:
        for token in tokenize.tokenize(f.readline):
            if token.type not in (tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1)):
                continue
            text = token.string.strip("'\"").lstrip("rbfRBF").strip("'\"")
            if any(text == name or text.endswith("/" + name) for name in RUN_FOLDER_FILES):
                found.append((token.start[0], token.string))
    return found


def test_only_the_run_package_names_run_folder_files():
    package = os.path.join(REPO, "tf_stfusion")
    offenders = []
    for folder, _, files in os.walk(package):
        if os.path.abspath(folder).startswith(os.path.join(package, "run")):
            continue
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                offenders += [f"{os.path.relpath(path, REPO)}:{line}: {text}" for line, text in _path_literals(path)]
    assert not offenders, "run-folder paths outside tf_stfusion/run/ (use run.folder.RunFolder): " + "; ".join(
        offenders)
    assert _path_literals(os.path.join(package, "run", "folder.py"))  # the grep sees what it looks for


def _calls(path, name):
    """Line numbers of the calls of ``name`` (a plain or an attribute call) in ``path``."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == name]


def test_only_the_run_package_opens_a_runs_data_source():
    """Search, export, compare and the benchmarks read a run's videos through
    ``run.inputs`` (``RunContext.inputs`` / ``open_inputs``): one source and hold-out."""
    inputs = os.path.join(REPO, "tf_stfusion", "run", "inputs.py")
    offenders = []
    for top in ("tf_stfusion", "benchmarks"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                path = os.path.join(folder, name)
                if name.endswith(".py") and path != inputs and not path.endswith(os.path.join("data", "sources.py")):
                    offenders += [f"{os.path.relpath(path, REPO)}:{line}" for line in _calls(path, "resolve_source")]
    assert not offenders, "a run's data opened outside tf_stfusion/run/inputs.py: " + "; ".join(offenders)
    assert _calls(inputs, "resolve_source")  # the grep sees what it looks for
