"""The command-line conventions of every CLI (``run_app``: flags, exit codes,
TensorFlow's log lines) and the flag files shipped with the package: the paper's recipes (``k400``,
``sthv1``, ``sthv2``, ``ucf101``) and the CPU-sized ``demo``.

``--flagfile=demo.flags`` works from any directory: a ``--flagfile`` that names no
existing file but whose file name is one of these resolves to the packaged copy
(a real path always wins, so a user's own ``demo.flags`` is read instead).
"""

import importlib.util
import os
import sys

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


def run_app(main, define_flags, verbosity="warning"):
    """Runs a console script the one way every CLI of the package runs.

    ``define_flags()`` defines its flags; packaged ``--flagfile`` names resolve
    (``resolve_flagfiles``); a flag or flag-file error prints one ``error:`` line
    and exits 2 (absl's own parser prints two and exits 1), before TensorFlow is
    imported, as ``main`` does for a bad value. absl's Python log level is
    ``verbosity`` unless ``--verbosity`` is given; TensorFlow's C++ log level
    follows it (``quiet_tensorflow``). Exits with ``main(argv)``'s return value.
    """
    from absl import app, flags, logging

    define_flags()

    def parse(argv):
        try:
            argv = flags.FLAGS(argv)
        except flags.Error as e:
            print(f"error: {str(e).splitlines()[0].removeprefix('ERROR:: ')}", file=sys.stderr)
            sys.exit(2)
        given = flags.FLAGS["verbosity"]
        if not given.present:
            logging.set_verbosity(verbosity)
        quiet_tensorflow(given.value if given.present else None)
        return argv

    def checked_main(argv):
        if len(argv) > 1:  # absl's UsageError would print the whole docstring and exit 1
            print(f"error: unexpected arguments {argv[1:]}; every setting is a --flag", file=sys.stderr)
            return 2
        return main(argv)

    app.run(checked_main, argv=resolve_flagfiles(sys.argv), flags_parser=parse)


# What TensorFlow 2.21 prints on a CPU machine to a user who did nothing wrong:
# "All log messages before absl::InitializeLog() is called are written to
# STDERR", the oneDNN notice and "Could not find cuda drivers" come from static
# initialisers while ``import tensorflow`` loads its libraries -- no log level
# hides them; "failed call to cuInit: ... (303)" and grappler's "remapper failed"
# are E-level lines that TF_CPP_MIN_LOG_LEVEL=3 hides.
def quiet_tensorflow(verbosity=None):
    """Sets TensorFlow's C++ log level for this process before it is imported.

    ``verbosity``: absl's ``--verbosity`` (1 debug, 0 info, -1 warning, -2 error,
    -3 fatal) or None (not given): ``TF_CPP_MIN_LOG_LEVEL`` becomes
    ``clip(-verbosity, 0, 3)``, or 3 when None. At 3, file descriptor 2 is also
    silenced while ``import tensorflow`` runs (wherever that import happens
    later; a Python exception from it still surfaces). The user's own
    ``TF_CPP_MIN_LOG_LEVEL`` wins over both. No-op once TensorFlow is imported.
    """
    import tf_stfusion

    if "tensorflow" in sys.modules:
        return
    if tf_stfusion.USER_TF_LOG_LEVEL is None:
        level = str(3 if verbosity is None else min(3, max(0, -verbosity)))
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ[tf_stfusion.DEFAULT_TF_LOG_LEVEL] = level
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport:
    """A ``sys.meta_path`` finder that loads ``tensorflow`` once with fd 2 on /dev/null."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    """``tensorflow``'s own loader, but ``exec_module`` runs with fd 2 on /dev/null."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_data, is_package, get_resource_reader, ...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        try:
            self.loader.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


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
