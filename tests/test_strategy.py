"""Strategy files, sampling, applying and the Eq. 7 marginals."""

import json
import math

import numpy as np
import pytest

import tf_stfusion as stf
from tf_stfusion import gating
from tf_stfusion.strategy import FORMAT, StrategyError, unit_from_keeps, strategy_masks

TINY_LAYERS = [f"block{b}/layer{l}" for b in range(1, 5) for l in (1, 2)]


def test_uniform_and_fixed_strategies(tiny):
    s = stf.Strategy.uniform("ST", tiny)
    assert s.backbone == "tiny" and s.names == TINY_LAYERS and set(s.units) == {"ST"}
    assert set(stf.fixed_strategies("tiny")) == {"S", "ST", "S+ST"}
    assert len(stf.Strategy.uniform("S", "densenet121").layers) == 58


def test_json_round_trip(tmp_path):
    s = stf.Strategy.from_units(
        "tiny", ["S", "ST", "S+ST", "none", "S", "S", "ST", "S+ST"],
        metrics={"top1": 0.5, "top5": 0.9}, provenance={"seed": 3, "checkpoint": "ckpt-7"},
    )
    path = s.save(tmp_path / "best.json")
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["num_layers"] == 8
    assert data["layers"][3] == {"name": "block2/layer2", "unit": "none"}
    assert stf.Strategy.load(path) == s


def _write(tmp_path, content):
    path = tmp_path / "s.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _valid():
    return stf.Strategy.uniform("S", "tiny").to_dict()


def _with(**changes):
    d = _valid()
    d.update(changes)
    return d


def _layers_with(index, entry):
    d = _valid()
    d["layers"][index] = entry
    return d


BAD_FILES = {
    "bad json": ('{"format": "stfusion-strategy/1",', r"s\.json: not valid JSON \(line 1, column"),
    "not an object": ([1, 2], "expected a JSON object"),
    "no format": ({k: v for k, v in _valid().items() if k != "format"}, "missing field 'format'"),
    "wrong version": (_with(format="stfusion-strategy/9"), r"'format' is 'stfusion-strategy/9'.*reads 'stfusion-strategy/1'"),
    "unknown backbone": (_with(backbone="vgg16"), r"field 'backbone': unknown backbone 'vgg16'"),
    "unknown unit": (_layers_with(2, {"name": "block2/layer1", "unit": "T"}), r"layers\[2\] \('block2/layer1'\): unknown unit 'T'; expected one of S, ST, S\+ST, none"),
    "too few layers": (_with(layers=_valid()["layers"][:5], num_layers=5), "has 8 fusion layers, the strategy lists 5"),
    "wrong name": (_layers_with(4, {"name": "block3/layer9", "unit": "S"}), r"layers\[4\]: name 'block3/layer9' does not match the backbone's layer 'block3/layer1'"),
    "count mismatch": (_with(num_layers=9), "'num_layers' is 9 but 'layers' has 8"),
    "entry not object": (_layers_with(0, "S"), r"layers\[0\] must be an object"),
    "layers not list": (_with(layers={"a": 1}), "'layers' must be a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_strategy_files_are_refused_with_a_clear_message(tmp_path, case):
    content, message = BAD_FILES[case]
    path = _write(tmp_path, content)
    with pytest.raises(StrategyError, match=message) as err:
        stf.Strategy.load(path)
    assert str(path) in str(err.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(StrategyError, match="cannot read strategy file"):
        stf.Strategy.load(tmp_path / "nope.json")


def test_strategy_for_another_backbone_is_refused_by_apply(tiny):
    with pytest.raises(StrategyError, match="backbone 'densenet121', the model is 'tiny'"):
        stf.apply_strategy(tiny, stf.Strategy.uniform("S", "densenet121"))


def test_unit_table():
    assert unit_from_keeps(True, False, True) == "S"
    assert unit_from_keeps(False, True, True) == "ST"
    assert unit_from_keeps(True, True, True) == "S+ST"
    assert unit_from_keeps(False, False, True) == "none"
    assert unit_from_keeps(True, True, False) == "none"


def test_apply_strategy_sets_masks(tiny):
    s = stf.Strategy.from_units("tiny", ["S", "ST", "S+ST", "none"] * 2)
    stf.apply_strategy(tiny, s)
    assert gating.get_gate_mode(tiny) == "fixed"
    got = {(i.layer, i.path): float(i.gate.fixed_mask.numpy()[0]) for i in stf.gates(tiny)}
    assert got[("block1/layer1", "S")] == 1 and got[("block1/layer1", "ST")] == 0
    assert got[("block1/layer2", "S")] == 0 and got[("block1/layer2", "ST")] == 1
    assert got[("block2/layer1", "S")] == 1 and got[("block2/layer1", "ST")] == 1
    assert [got[("block2/layer2", p)] for p in ("S", "ST", "D1")] == [0, 0, 0]
    np.testing.assert_array_equal(strategy_masks(s, tiny), list(got.values()))


def _set_probs(model, probs):
    for info, p in zip(stf.gates(model), probs):
        info.gate.drop_logit.assign(math.log(p / (1 - p)))


def test_sampling_follows_drop_probabilities(tiny):
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.05, 0.95, size=24)
    _set_probs(tiny, probs)
    samples = stf.strategy.sample_strategies(tiny, 4000, seed=1)
    p = probs.reshape(8, 3)  # S, ST, D1 per layer
    for li in range(8):
        ks, kst, kd1 = 1 - p[li]
        want = {
            "S": ks * (1 - kst) * kd1, "ST": (1 - ks) * kst * kd1, "S+ST": ks * kst * kd1,
        }
        want["none"] = 1 - sum(want.values())
        units = [s.units[li] for s in samples]
        for unit, prob in want.items():
            freq = units.count(unit) / len(units)
            assert abs(freq - prob) < 5 * math.sqrt(prob * (1 - prob) / 4000) + 1e-3, (li, unit)
    # Seeded: reproducible, and different seeds differ.
    assert stf.sample_strategy(tiny, seed=5) == stf.sample_strategy(tiny, seed=5)
    assert len({tuple(stf.sample_strategy(tiny, seed=i).units) for i in range(10)}) > 1


def test_marginals_match_eq7_by_hand(tiny):
    probs = np.linspace(0.02, 0.9, 24)
    _set_probs(tiny, probs)
    out = stf.marginals(tiny)
    assert len(out["gates"]) == 24 and len(out["layers"]) == 8
    for g, p in zip(out["gates"], probs):
        assert g["p"] == pytest.approx(p, rel=1e-5)
        assert g["marginal"] == pytest.approx(1 - math.sqrt(p), rel=1e-5)
    for li, layer in enumerate(out["layers"]):
        m2, m3 = 1 - math.sqrt(probs[3 * li]), 1 - math.sqrt(probs[3 * li + 1])
        assert layer["layer"] == TINY_LAYERS[li]
        assert layer["S"] == pytest.approx(m2 * (1 - m3), rel=1e-5)
        assert layer["ST"] == pytest.approx((1 - m2) * m3, rel=1e-5)
        assert layer["S+ST"] == pytest.approx(m2 * m3, rel=1e-5)
        assert layer["none"] == pytest.approx((1 - m2) * (1 - m3), rel=1e-5)
        assert sum(layer[u] for u in ("S", "ST", "S+ST", "none")) == pytest.approx(1.0)
    json.dumps(out)  # the probabilities.json structure serialises as is


def test_k_strategies_on_one_tiled_batch_equal_one_at_a_time(tiny, clips):
    from tf_stfusion.strategy import apply_strategies

    import tensorflow as tf

    # BatchNorm statistics must not be the initial ones, or masks could hide differences.
    stf.set_gate_mode(tiny, "off")
    tiny(clips, training=True)
    strategies = list(stf.fixed_strategies(tiny).values()) + stf.sample_strategies(tiny, 3, seed=1)
    alone = []
    for s in strategies:
        stf.apply_strategy(tiny, s)
        alone.append(tiny(clips, training=False).numpy())
    apply_strategies(tiny, strategies)
    together = tiny(tf.tile(clips, [len(strategies), 1, 1, 1, 1]), training=False).numpy()
    np.testing.assert_allclose(together, np.concatenate(alone), rtol=1e-5, atol=1e-5)
    assert len({a.tobytes() for a in alone}) == len(strategies)  # the strategies really differ
