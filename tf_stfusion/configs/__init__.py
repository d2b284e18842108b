"""The flag files shipped with the package: the paper's recipes (``k400``,
``sthv1``, ``sthv2``, ``ucf101``) and the CPU-sized ``demo``.

``--flagfile=demo.flags`` works from any directory: a ``--flagfile`` that names no
existing file but whose file name is one of these resolves to the packaged copy
(a real path always wins, so a user's own ``demo.flags`` is read instead).
"""

import os

FOLDER = os.path.dirname(os.path.abspath(__file__))


def names():
    """The packaged flag files, e.g. ``["demo.flags", "k400.flags", ...]``."""
    return sorted(f for f in os.listdir(FOLDER) if f.endswith(".flags"))


def path(name):
    """The packaged copy of ``name`` (``demo``, ``demo.flags`` or ``configs/demo.flags``), or None."""
    base = os.path.basename(name)
    base = base if base.endswith(".flags") else f"{base}.flags"
    candidate = os.path.join(FOLDER, base)
    return candidate if os.path.isfile(candidate) else None


def settings(name):
    """``{flag: value}`` of a packaged flag file's ``--flag=value`` lines (as text)."""
    found = {}
    with open(path(name)) as f:
        for line in f:
            if line.startswith("--") and "=" in line:
                key, value = line[2:].strip().split("=", 1)
                found[key] = value
    return found


def run_app(main, define_flags):
    """A console script: defines its flags, resolves packaged ``--flagfile`` names, runs ``main``."""
    import sys

    from absl import app

    define_flags()
    app.run(main, argv=resolve_flagfiles(sys.argv))


def resolve_flagfiles(argv):
    """``argv`` with every ``--flagfile=NAME`` that is not an existing file but names
    a packaged config replaced by that config's path."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        for prefix in ("--flagfile=", "-flagfile="):
            if arg.startswith(prefix):
                name = arg[len(prefix):]
                if not os.path.exists(name) and path(name):
                    arg = prefix + path(name)
        if arg in ("--flagfile", "-flagfile") and i + 1 < len(argv):
            name = argv[i + 1]
            out.append(arg)
            arg = path(name) if not os.path.exists(name) and path(name) else name
            i += 1
        out.append(arg)
        i += 1
    return out
