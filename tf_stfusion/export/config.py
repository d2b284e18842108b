"""The export's settings (``ExportConfig``) and its one error (``ExportError``).

Imports nothing but the standard library, so that the command line
(``export.main``) checks its flags before TensorFlow is imported.
"""

import dataclasses

FORMATS = ("saved_model", "onnx", "tflite")  # the keys of writers.WRITERS, in writing order
DEFAULT_FORMATS = ("saved_model", "onnx")


class ExportError(ValueError):
    """A refused or failed export: one line naming the file or flag and what to do;
    nothing is left behind."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    strategy_file: str
    model_dir: str
    export_dir: str
    checkpoint: str = ""
    formats: tuple = DEFAULT_FORMATS
    model_name: str = "stfusion"
    version: int = 1
    num_frames: int = 0  # 0: the run's
    size: int = 0  # 0: the run's eval size
    overwrite: bool = False
    parity_clips: int = 2
    seed: int = 0
    check_serving: bool = False  # feed every validation video through serving_video and compare
    verify_data: bool = False  # with check_serving: the shards' CRC32C too, not only their sizes
    quantize: tuple = ()  # with tflite: some of litert.QUANTIZATIONS (float16, int8)
    # int8: representative clips from the run's hold-out (else training) videos; 0: as many as the search
    # calibrated an int8 pick's finalists on, else checks.DEFAULT_CALIBRATION_CLIPS
    calibration_clips: int = 0
    latency_repeats: int = 10  # with tflite: batch-1 latency, median of this many runs of every file
    allow_over_budget: bool = False  # write the files even if they miss the search's latency budget
    ensemble: int = 0  # M > 0: the posterior-averaged ensemble of the search's first M sampled strategies
