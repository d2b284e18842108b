"""The search's finalists scored in the precision they ship in (``--score_precision=int8``).

The strategies the search would ship are picked on float scores of the template in
fixed mode, but a phone runs the int8 LiteRT file, and post-training quantization
does not cost every strategy the same. So the *finalists* -- the ``K`` best
distinct sampled strategies scored on the whole selection split, by the search's
ranking (top-1, then top-5, then fewer GFLOPs), within its budgets; the float pick
is the first of them -- are each

1. pruned to their strategy (``models.prune``) and converted to int8 LiteRT by the
   export's own converter (``litert.convert``), calibrated on uint8 clips of
   training videos the template trained on, never the selection split
   (``RunInputs.calibration_clips(trained_on=True)``);
2. scored on the selection split's videos by ``evaluation.Evaluator`` -- the same
   clips, views, softmax averaging and per-video outcomes as the float scores
   (``litert.ClipModel`` feeds the file the uint8 clips a client sends);
3. compared with their own float scores video by video
   (``selection.paired_difference``: int8 minus float, paired bootstrap 95%).

The pick is the finalist best by int8 top-1, ties broken by the search's ranking
(``pick_by_int8``). Each finalist's int8 scores are journaled as they come
(``Journal``, ``finalists.jsonl``): a search killed among its conversions --
minutes each for a DenseNet-121 -- resumes with the finalists still to score.
"""

import os

from tf_stfusion import selection
from tf_stfusion.fileio import append_jsonl, atomic_write_json, read_jsonl

FINALISTS = "finalists.json"
JOURNAL = "finalists.jsonl"
PRECISIONS = ("float32", "int8")


class Journal:
    """``finalists.jsonl`` in the search's folder: per finalist (its units) scored
    under ``calibration`` (``{"clips", "videos"}``: how its int8 file was
    calibrated), the packed per-video int8 top-1 bits on the selection split and
    the file's bytes. The folder's ``plan.json`` fixes the checkpoint and the
    selection videos, so an entry of the same units and calibration is that
    finalist's score; entries of another calibration are ignored."""

    def __init__(self, folder, calibration, chief=True):
        self.path, self.calibration, self.chief = os.path.join(folder, JOURNAL), calibration, chief
        self.entries = {tuple(row["units"]): row for row in read_jsonl(self.path)
                        if row.get("calibration") == calibration}

    def get(self, units, num_videos):
        """``(per-video correctness, bytes)`` journaled for ``units``, or None."""
        row = self.entries.get(tuple(units))
        if row is None or row["num_videos"] != num_videos:
            return None
        return selection.unpack_bits(row["correct"], num_videos), row["bytes"]

    def add(self, units, correct, file_bytes):
        row = {"units": list(units), "calibration": self.calibration, "num_videos": int(len(correct)),
               "correct": selection.pack_bits(correct), "bytes": int(file_bytes)}
        self.entries[tuple(units)] = row
        if self.chief:
            append_jsonl(self.path, row)


def check_settings(score_precision, finalists, calibration_clips):
    """Raises ``ValueError`` naming the flag for settings the search cannot use."""
    if score_precision not in PRECISIONS:
        raise ValueError(f"--score_precision must be one of {PRECISIONS}, got {score_precision!r}")
    if finalists < 1 or calibration_clips < 1:
        raise ValueError(f"need --int8_finalists >= 1 and --calibration_clips >= 1, got {finalists} and "
                         f"{calibration_clips}")


def distinct_first(ranked, count):
    """The first ``count`` rows of ``ranked`` with distinct units (a strategy drawn
    twice is one finalist, under its first id)."""
    seen, out = set(), []
    for row in ranked:
        key = tuple(row["units"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out[:count]


def pick_by_int8(entries):
    """Index of the finalist best by int8 top-1; ``entries`` in the search's ranking
    order (best first), so a tie goes to the better-ranked one."""
    if not entries:
        raise ValueError("no finalist to pick from")
    return max(range(len(entries)), key=lambda i: (entries[i]["int8"]["top1"], -i))


def finalist_entry(row, float_correct, int8_correct, file_bytes):
    """One finalist's record: its float and int8 top-1 on the selection split with
    Wilson 95% intervals, and the paired int8-minus-float difference."""
    float_top1, int8_top1 = selection.proportion(float_correct), selection.proportion(int8_correct)
    return {"id": row["id"], "units": row["units"], "gflops": row["gflops"], "int8_bytes": file_bytes,
            "float32": {"top1": float_top1["value"], "top1_ci": float_top1["ci"], "num_videos": float_top1["n"]},
            "int8": {"top1": int8_top1["value"], "top1_ci": int8_top1["ci"], "num_videos": int8_top1["n"]},
            "int8_minus_float32": selection.paired_difference(int8_correct, float_correct).to_dict()}


def int8_correct(template, strategy, contract, calibration, dataset_fn, num_videos, distribution=None):
    """Per-video top-1 correctness (bool ``[num_videos]``, in ``dataset_fn``'s video
    order) of ``strategy``'s int8 LiteRT file, and the file's size in bytes.
    ``template``: built at the contract's clip size; ``calibration``: uint8 clips
    ``[T, S, S, 3]``. Raises ``litert.LiteRTError`` when the conversion fails."""
    from tf_stfusion import litert
    from tf_stfusion.evaluation import Evaluator
    from tf_stfusion.models.prune import prune

    flat = litert.convert(prune(template, strategy), contract, "int8", calibration)
    model = litert.ClipModel(flat)
    evaluator = Evaluator(model, contract.eval_clips, num_classes=model.runner.num_classes, distribution=distribution)
    return evaluator.evaluate(dataset_fn, num_videos).results[0].top1, len(flat)


def record(entries, pick, split, calibration, asked=None):
    """``finalists.json``: the finalists, the pick, and how they were scored; with
    ``asked`` (``--int8_finalists``) more than there are, a ``shortfall`` note."""
    out = {"split": split, "precision": "int8", "pick": entries[pick]["id"], "float_pick": entries[0]["id"],
           "rule": "the finalist best by int8 top-1 on the selection split (ties: top-1, top-5, fewer GFLOPs in "
                   "float32); finalists: the best distinct sampled strategies scored on the whole split",
           "calibration": calibration, "interval": selection.CI_METHOD, "paired": selection.PAIRED_METHOD,
           "finalists": entries}
    if asked and len(entries) < asked:
        out["shortfall"] = (f"{len(entries)} of the {asked} finalists asked (--int8_finalists): no other distinct "
                            "sampled strategy was scored on the whole split within the budgets (racing drops the "
                            "rest); raise --num_samples or the budget" + ("; int8 chose nothing" * (len(entries) == 1)))
    return out


def _percent(entry):
    low, high = entry["top1_ci"]
    return f"{100 * entry['top1']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def report_lines(result):
    """report.md's section on the int8 finalists (``record``'s dict)."""
    lines = ["## Finalists in int8 (the shipping precision)", "",
             f"Opt is the finalist best by int8 LiteRT top-1 on `{result['split']}`"
             f" ({result['finalists'][0]['float32']['num_videos']} videos); the float pick was "
             f"`{result['float_pick']}`. Each finalist was pruned and converted as `stfusion-export "
             f"--quantize=int8` converts, calibrated on {result['calibration']['clips']} clips of "
             f"{result['calibration']['videos']}." + (f" **Only {result['shortfall']}.**" if "shortfall" in result
                                                       else ""), "",
             "| Finalist | GFLOPs | float32 top-1 | int8 top-1 | int8 - float32 (paired) | right only in int8 / "
             "only in float32 | |", "|---|---|---|---|---|---|---|"]
    for entry in result["finalists"]:
        d = entry["int8_minus_float32"]
        mark = "**pick**" if entry["id"] == result["pick"] else ""
        lines.append(f"| `{entry['id']}` | {entry['gflops']:.3f} | {_percent(entry['float32'])} | "
                     f"{_percent(entry['int8'])} | {100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.1f}, "
                     f"{100 * d['ci'][1]:+.1f}] ({d['verdict']}) | {d['only_a']} / {d['only_b']} videos | {mark} |")
    lines += ["", f"Top-1 intervals: {result['interval']}. Differences: int8 minus float32 on the same videos, "
              f"{result['paired']}.", ""]
    return lines


def write_finalists(out_dir, result):
    """``finalists.json`` of ``result`` (``record``'s dict) in ``out_dir``; for a
    float search (``result`` None) an earlier int8 search's file is removed, as it
    no longer describes the pick. Returns report.md's lines about it."""
    path = os.path.join(out_dir, FINALISTS)
    if result is None:
        if os.path.exists(path):
            os.remove(path)
        return []
    atomic_write_json(path, result)
    return report_lines(result)


def summary_metrics(result):
    """best.json's record of the int8 pick (under ``metrics``)."""
    entry = next(e for e in result["finalists"] if e["id"] == result["pick"])
    return {"selected_by": f"int8 top-1 on {result['split']}, best of {len(result['finalists'])} finalists "
                           f"({FINALISTS})", "float_pick": result["float_pick"],
            "int8": {**entry["int8"], "split": result["split"], "vs_float32": entry["int8_minus_float32"]}}
