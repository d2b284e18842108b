"""``python -m tf_stfusion.latency_device``: a latency table timed on the device itself,
with nothing but the runtime installed.

    # where TensorFlow is (converting needs it):
    python -m tf_stfusion.latency_table --model_dir=RUN --runtime=litert --parts_dir=parts/
    # on the device (numpy, absl-py, the runtime's package, this package installed --no-deps):
    python -m tf_stfusion.latency_device --parts=parts/ --output=latency_litert.json

Reads ``parts.json`` (``latency.export_parts``: every part of the table converted
as the runtime's file is), loads each part in the runtime alone
(``runtimes.load_part``: ``onnxruntime``, ``ai_edge_litert``), times it batch 1 on
random inputs of its shapes exactly as ``latency_table`` times it here
(``latency.time_call``: median of ``--repeats`` calls after 2 warm-up calls), and
writes the table with *this* machine's line and runtime version -- the table the
search's ``--latency_table`` reads. Never imports TensorFlow.
"""

import os
import sys

from absl import flags

FLAGS = flags.FLAGS
MANIFEST_FIELDS = ("backbone", "num_classes", "clip", "precision", "method", "converted_on", "layer_flops",
                   "fixed_flops", "parts")
REWRITE = "write the parts again with python -m tf_stfusion.latency_table --parts_dir"


def define_flags():
    flags.DEFINE_string("parts", None, "The folder latency_table --parts_dir wrote (with parts.json).")
    flags.DEFINE_string("output", None, "Where the JSON table goes.")
    flags.DEFINE_integer("repeats", 10, "Timed calls per part (the median is kept), after 2 warm-up calls.")


def read_parts(folder):
    """``parts.json`` of ``folder``, checked; one-line ``ValueError`` (``FileNotFoundError``
    without one) naming the file and field."""
    from tf_stfusion.latency import PARTS_FORMAT, PARTS_MANIFEST, RUNTIMES, read_json_file

    path = os.path.join(folder, PARTS_MANIFEST)
    manifest = read_json_file(path, "parts manifest", "write the parts with python -m tf_stfusion.latency_table "
                              "--runtime=R --parts_dir=DIR where TensorFlow is")
    if not isinstance(manifest, dict) or manifest.get("format") != PARTS_FORMAT:
        raise ValueError(f"{path}: not a {PARTS_FORMAT} file")
    if manifest.get("runtime") not in RUNTIMES[1:]:
        raise ValueError(f"{path}: field 'runtime' must be one of {RUNTIMES[1:]}, got {manifest.get('runtime')!r}")
    missing = [field for field in MANIFEST_FIELDS if field not in manifest]
    if missing:
        raise ValueError(f"{path}: field(s) {missing} missing; {REWRITE}")
    if not isinstance(manifest["parts"], list) or not manifest["parts"]:
        raise ValueError(f"{path}: field 'parts' must be a non-empty list of parts; {REWRITE}")
    for i, part in enumerate(manifest["parts"]):
        _check_part(part, f"{path}: parts[{i}]")
        if not os.path.isfile(os.path.join(folder, part["file"])):
            raise ValueError(f"{path}: part {part['label']!r}: file {part['file']!r} missing from {folder}; "
                             "copy the whole folder")
    _check_labels([part["label"] for part in manifest["parts"]], path)
    _check_network(manifest, path)
    return manifest


def _check_network(manifest, path):
    """One-line ``ValueError`` unless the manifest's class count, clip and FLOPs are
    what ``export_parts`` writes: the table would carry them, and the search refuse it."""
    from tf_stfusion.latency import is_clip, layers_of

    clip, classes, layer_flops = manifest["clip"], manifest["num_classes"], manifest["layer_flops"]
    layers = layers_of(part["label"] for part in manifest["parts"])
    if not is_clip(clip):
        raise ValueError(f"{path}: field 'clip' must be [frames, height, width, 3], got {clip!r}; {REWRITE}")
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"{path}: field 'num_classes' must be an integer >= 1, got {classes!r}; {REWRITE}")
    if not isinstance(layer_flops, list) or len(layer_flops) != len(layers):
        raise ValueError(f"{path}: field 'layer_flops' must list the {len(layers)} timed layers' FLOPs, got "
                         f"{str(layer_flops)[:80]}; {REWRITE}")


def _check_part(part, where):
    """One-line ``ValueError`` unless ``part`` is an entry ``latency.export_parts`` writes."""
    from tf_stfusion.latency import PART_DTYPES

    if not isinstance(part, dict) or any(not isinstance(part.get(f), str) for f in ("label", "file", "dtype")):
        raise ValueError(f"{where}: must be an object with strings 'label', 'file' and 'dtype'; {REWRITE}")
    shapes, inputs = part.get("shapes"), part.get("inputs")
    if not isinstance(shapes, list) or not all(
            isinstance(s, list) and s and all(isinstance(d, int) and d > 0 for d in s) for s in shapes):
        raise ValueError(f"{where} ({part['label']}): field 'shapes' must be a list of [dimension, ...] lists of "
                         f"integers > 0, got {shapes!r}; {REWRITE}")
    if not isinstance(inputs, list) or len(inputs) != len(shapes) or not all(isinstance(n, str) for n in inputs):
        raise ValueError(f"{where} ({part['label']}): field 'inputs' must name one input per shape, got "
                         f"{inputs!r}; {REWRITE}")
    if part["dtype"] not in PART_DTYPES:
        raise ValueError(f"{where} ({part['label']}): field 'dtype' must be one of {PART_DTYPES}, got "
                         f"{part['dtype']!r}; {REWRITE}")


def _check_labels(labels, path):
    """One-line ``ValueError`` for a label that is not a table part, one repeated, or
    a part the table needs that is absent (every layer in every unit, the empty call
    and the input step) -- before minutes of timing, not after."""
    from tf_stfusion.latency import UNIT_CHOICES, missing_parts

    for label in labels:
        kind, _, rest = label.partition(":")
        layer, _, unit = rest.rpartition(":")
        if not (label == "call_overhead" or (kind == "fixed" and rest) or (kind == "layer" and layer
                                                                            and unit in UNIT_CHOICES)):
            raise ValueError(f"{path}: label {label!r} is not a part of a latency table (call_overhead, "
                             f"fixed:NAME, layer:NAME:UNIT with UNIT in {UNIT_CHOICES}); {REWRITE}")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    absent = missing_parts(labels)
    if repeated or absent:
        raise ValueError(f"{path}: part(s) {(repeated or absent)[:3]} {'repeated' if repeated else 'missing'}; "
                         f"{REWRITE}")


class DeviceRuntime:
    """The manifest's runtime as installed here: name, version, precision, method."""

    def __init__(self, manifest):
        from tf_stfusion import runtimes

        self.name, self.precision = manifest["runtime"], manifest["precision"]
        try:
            self.version = runtimes.version(self.name)
        except ImportError as e:  # before any part is loaded: name the pip package, not the module
            package = runtimes.PACKAGES[self.name]
            raise ValueError(f"the parts are for {self.name}, whose package {package} is not installed here ({e}); "
                             f"pip install {package}") from None
        self.method = f"{manifest['method']}; converted on {manifest['converted_on']}, timed here"


def time_exported_parts(folder, repeats=10, log=print):
    """The latency table of the parts in ``folder``, timed here in their runtime."""
    from tf_stfusion import runtimes
    from tf_stfusion.latency import assemble_table, part_feeds, time_call

    manifest = read_parts(folder)
    runtime, timings = DeviceRuntime(manifest), {}
    for part in manifest["parts"]:
        path = os.path.join(folder, part["file"])
        try:
            call = runtimes.load_part(runtime.name, path, part["inputs"])
            timings[part["label"]] = time_call(part["label"], call, part_feeds(part["shapes"], part["dtype"]),
                                               repeats)
        except Exception as e:  # the runtime's own errors (a file or shapes that do not fit): one line, not its trace
            reason = " ".join(str(e).split())[:300]
            raise ValueError(f"{path}: part {part['label']!r} does not run in {runtime.name} on inputs "
                             f"{part['shapes']} {part['dtype']} ({type(e).__name__}: {reason}); copy the folder again (a "
                             f"file cut short) or {REWRITE}") from None
    log(f"latency: {manifest['backbone']}: {len(timings)} parts timed in {runtime.name} {runtime.version}")
    flops = (manifest["layer_flops"], manifest["fixed_flops"])
    return assemble_table(manifest["backbone"], manifest["num_classes"], manifest["clip"], timings, flops, runtime,
                          repeats)


def main(argv):
    del argv
    from tf_stfusion.fileio import atomic_write_json
    from tf_stfusion.latency import table_line

    try:
        if not FLAGS.parts or not FLAGS.output:
            raise ValueError("give --parts (a folder of latency_table --parts_dir) and --output (the table's path)")
        if FLAGS.repeats < 1:
            raise ValueError(f"--repeats={FLAGS.repeats}: need at least 1 timed call per part (default 10)")
        if os.path.isdir(FLAGS.output):
            raise ValueError(f"--output={FLAGS.output}: a folder; give the JSON file's path")
        folder = os.path.dirname(os.path.abspath(FLAGS.output))
        if not os.path.isdir(folder):
            raise ValueError(f"--output={FLAGS.output}: no folder {folder}; create it first")
        table = time_exported_parts(FLAGS.parts, FLAGS.repeats)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(FLAGS.output, table)
    print(f"{table['machine']}\n{table_line(table)} -> {FLAGS.output}")
    return 0


def run():
    """Console-script entry point (``stfusion-latency-device``)."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
