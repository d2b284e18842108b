"""The run package: run.json read in every layout written so far, each fact stored
once, the folder's paths and older layouts, one checkpoint restore, and no
TensorFlow for the CLIs' flag checks."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tf_stfusion.run.config import TrainError
from tf_stfusion.run.folder import RunFolder
from tf_stfusion.run.record import RunRecord

ROOT = pathlib.Path(__file__).resolve().parent.parent
# run.json as main wrote it at 6384129 (tests/conftest.py's trained_run settings, Run.write_record).
MAIN_RECORD = ROOT / "tests" / "records" / "run_main_6384129.json"
CLASSES = ["move_right", "move_left", "move_down", "move_up", "rotate_cw", "rotate_ccw", "grow", "shrink"]


def _main_record():
    return json.loads(MAIN_RECORD.read_text())


def _key_paths(tree, key, prefix=""):
    """Every path to ``key`` in a JSON tree."""
    found = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            path = f"{prefix}.{k}" if prefix else k
            found += [path] if k == key else []
            found += _key_paths(v, key, path)
    return found


def test_a_record_written_by_main_reads_and_keeps_its_identity():
    record = RunRecord.from_dict(_main_record(), "main's run.json")
    cfg = record.config
    assert (cfg.backbone, cfg.batch_size, cfg.length_scale, cfg.steps_per_epoch) == ("tiny", 8, 2.0, 3)
    assert (cfg.data.num_frames, cfg.data.input_size, cfg.data.eval_clips, cfg.data.select_split) == (8, 32, 2, "holdout")
    contract = record.contract
    assert (contract.num_frames, contract.frame_stride, contract.sampler, contract.eval_clips, contract.eval_size) == \
        (8, 1, "dense", 2, 32)
    assert list(contract.class_names) == CLASSES and (contract.jpeg_quality, contract.fps) == (90, 0.0)
    assert record.identity() == {"backbone": "tiny", "units": None, "class_names": CLASSES, "num_frames": 8,
                                 "input_size": 32, "selection": {"split": "holdout", "holdout_videos": 8}}
    assert record.selection["num_holdout"] == 8 and record.prior["length_scale"] == 2.0


def test_a_new_record_stores_each_fact_once_and_reads_back_the_same_run():
    old = RunRecord.from_dict(_main_record())
    new = old.__class__(old.config, old.contract, old.data, old.selection, old.prior, old.distribution)
    stored = json.loads(json.dumps(new.to_dict()))
    # num_frames of the clips: main stored it 3 times (identity, config.data, contract); the
    # synthetic set's own frame count (config.data.synthetic_config) is another fact.
    assert _key_paths(_main_record(), "num_frames") == ["identity.num_frames", "config.data.num_frames",
                                                         "config.data.synthetic_config.num_frames",
                                                         "contract.num_frames"]
    assert _key_paths(stored, "num_frames") == ["config.data.num_frames", "config.data.synthetic_config.num_frames"]
    assert _key_paths(stored, "class_names") == ["contract.class_names"] and "identity" not in stored
    back = RunRecord.from_dict(stored)
    assert back.config == old.config and back.contract == old.contract
    # The identity derived from the new layout equals the one main stored: a run
    # started by main and continued now is recognised as the same run.
    assert back.identity() == _main_record()["identity"]


def test_a_record_from_before_contracts_hold_outs_and_renames_still_reads(tmp_path):
    record = _main_record()
    for key in ("contract", "selection", "prior", "distribution"):
        del record[key]
    data = record["config"]["data"]
    data["eval_views"] = data.pop("eval_clips")  # names of earlier versions
    data["stride"] = data.pop("frame_stride")
    for key in ("select_split", "holdout_group"):
        del data[key]
    del record["config"]["prior_form"]
    record["data"]["dir"] = str(tmp_path)
    (tmp_path / "val-manifest.json").write_text(json.dumps({"short_side": 36, "jpeg_quality": 85, "fps": 12.5}))
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(record))
    read = RunFolder(str(folder)).record()
    cfg = read.config
    assert (cfg.data.eval_clips, cfg.data.frame_stride) == (2, 1)
    assert (cfg.data.select_split, cfg.data.holdout_group, cfg.prior_form) == ("val", "none", "paper")
    contract = read.contract
    assert list(contract.class_names) == CLASSES  # from the identity
    assert (contract.frame_short_side, contract.jpeg_quality, contract.fps) == (36, 85, 12.5)  # from the manifest


def test_an_unreadable_record_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": {"backbone": "tiny"}}))
    with pytest.raises(TrainError, match=r"run\.json: unreadable run record") as e:
        RunFolder(str(tmp_path)).record()
    assert "\n" not in str(e.value)
    with pytest.raises(TrainError, match="not a training run folder"):
        RunFolder(str(tmp_path / "elsewhere")).config()
    (tmp_path / "run.json").write_text(json.dumps({"format": "stfusion-run/9"}))
    with pytest.raises(TrainError, match="not a stfusion-run/2 record"):
        RunFolder(str(tmp_path)).record()


def test_the_folder_finds_search_results_in_the_new_and_the_old_layout(tmp_path):
    folder = RunFolder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="strategies/best.json"):
        folder.best_strategy_path()
    (tmp_path / "search").mkdir()  # a search written before strategies/ existed
    (tmp_path / "search" / "best.json").write_text("{}")
    assert folder.best_strategy_path() == str(tmp_path / "search" / "best.json")
    (tmp_path / "strategies").mkdir()
    (tmp_path / "strategies" / "best.json").write_text("{}")
    assert folder.best_strategy_path() == str(tmp_path / "strategies" / "best.json")
    with pytest.raises(TrainError, match=r"no finished warmup phase .*warmup/done\.json missing"):
        folder.finished_checkpoint("warmup")
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "done.json").write_text(json.dumps({"checkpoint": "ckpt-3"}))
    assert folder.finished_checkpoint("warmup") == str(tmp_path / "warmup" / "ckpt-3")


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    import tensorflow as tf

    from conftest import make_tiny
    from tf_stfusion.run.checkpoints import restore_weights

    prefix = tf.train.Checkpoint(model=make_tiny(num_classes=5)).save(str(tmp_path / "ckpt"))  # as Saver does
    restore_weights(make_tiny(num_classes=5, seed=1), prefix)  # the same model: fine
    with pytest.raises(TrainError, match=r"ckpt-1 does not match this model \(tiny, 7 classes\)") as e:
        restore_weights(make_tiny(num_classes=7), prefix)
    assert "\n" not in str(e.value)


def test_the_config_the_folder_and_the_record_load_no_tensorflow(tmp_path):
    (tmp_path / "run.json").write_text(MAIN_RECORD.read_text())
    code = ("import sys; from tf_stfusion.run.folder import RunFolder; import tf_stfusion.run.record; "
            f"c = RunFolder({str(tmp_path)!r}).config(); print(c.backbone, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["tiny", "False"]


def test_a_search_plan_of_an_earlier_version_resumes_under_todays_names(tmp_path):
    # plan.json of a search started before views per video were called eval_clips: the same
    # settings resume (compared under today's names), other settings are refused by name.
    from tf_stfusion.fileio import claim_settings
    from tf_stfusion.search import RENAMED_PLAN_KEYS

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"num_samples": 8, "clips_per_video": 2}))
    claim_settings(str(plan), {"num_samples": 8, "eval_clips": 2}, "differ: {keys}", RENAMED_PLAN_KEYS)
    with pytest.raises(ValueError, match="^differ: eval_clips$"):
        claim_settings(str(plan), {"num_samples": 8, "eval_clips": 3}, "differ: {keys}", RENAMED_PLAN_KEYS)
