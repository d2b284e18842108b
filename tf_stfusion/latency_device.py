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
    for part in manifest.get("parts") or []:
        if not os.path.isfile(os.path.join(folder, str(part.get("file")))):
            raise ValueError(f"{path}: part {part.get('label')!r}: file {part.get('file')!r} missing from {folder}; "
                             "copy the whole folder")
    return manifest


class DeviceRuntime:
    """The manifest's runtime as installed here: name, version, precision, method."""

    def __init__(self, manifest):
        from tf_stfusion import runtimes

        self.name, self.precision = manifest["runtime"], manifest["precision"]
        self.version = runtimes.version(self.name)
        self.method = f"{manifest['method']}; converted on {manifest['converted_on']}, timed here"


def time_exported_parts(folder, repeats=10, log=print):
    """The latency table of the parts in ``folder``, timed here in their runtime."""
    from tf_stfusion import runtimes
    from tf_stfusion.latency import assemble_table, part_feeds, time_call

    manifest = read_parts(folder)
    runtime, timings = DeviceRuntime(manifest), {}
    for part in manifest["parts"]:
        call = runtimes.load_part(runtime.name, os.path.join(folder, part["file"]), part["inputs"])
        timings[part["label"]] = time_call(part["label"], call, part_feeds(part["shapes"], part["dtype"]), repeats)
    log(f"latency: {manifest['backbone']}: {len(timings)} parts timed in {runtime.name} {runtime.version}")
    flops = (manifest["layer_flops"], manifest["fixed_flops"])
    return assemble_table(manifest["backbone"], manifest["num_classes"], manifest["clip"], timings, flops, runtime,
                          repeats)


def main(argv):
    del argv
    from tf_stfusion.fileio import atomic_write_json

    try:
        if not FLAGS.parts or not FLAGS.output or FLAGS.repeats < 1:
            raise ValueError("give --parts (a folder of latency_table --parts_dir), --output and --repeats >= 1")
        if os.path.isdir(FLAGS.output):
            raise ValueError(f"--output={FLAGS.output}: a folder; give the JSON file's path")
        folder = os.path.dirname(os.path.abspath(FLAGS.output))
        if not os.path.isdir(folder):
            raise ValueError(f"--output={FLAGS.output}: no folder {folder}; create it first")
        table = time_exported_parts(FLAGS.parts, FLAGS.repeats)
    except ImportError as e:
        print(f"error: the parts' runtime needs its package ({e}); pip install it", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(FLAGS.output, table)
    print(f"{table['machine']}\nlatency: {table['backbone']} at {'x'.join(map(str, table['clip'][:3]))}, batch 1, "
          f"{table['runtime']} {table['runtime_version']}: fixed parts {sum(table['fixed'].values()):.2f} ms -> "
          f"{FLAGS.output}")
    return 0


def run():
    """Console-script entry point (``stfusion-latency-device``)."""
    from tf_stfusion.configs import run_app

    run_app(main, define_flags)


if __name__ == "__main__":
    run()
