"""Mutation score of the numeric core and the data and statistics modules: how many small
deliberate bugs the fast tests catch.

    python benchmarks/mutation.py                       # every module, a sample of mutants each
    python benchmarks/mutation.py --modules=accounting --max_per_module=0   # all mutants of one
    python benchmarks/mutation.py --modules=data/pipeline,data/video,selection,evaluation,export/serving,\
export/client,deploy --max_per_module=5 --seed=37 --jobs=2       # the data / statistics sample of issue 29

Each mutant changes one operator or constant in one function body of a module of
``TARGETS`` (``+``/``-``, ``*``/``/``, ``<``/``<=``, ``>``/``>=``, ``==``/``!=``,
``and``/``or``, a dropped unary minus, an integer ``n`` -> ``n + 1``, a float ``x`` ->
``2x``, ``True``/``False``); strings, docstrings and error messages are left alone.
The module's fast tests (``TARGETS``) then run against it in a copy of the
repository (``pytest -x``): a failing test *kills* the mutant, a mutant that passes
*survives*. Printed: per module the mutants tried, killed, survived (each survivor
with its line and change), the kill rate with its 95% Wilson interval (a sample of
mutants is a sample), the seconds taken and the machine. Not part of CI (slow).
"""

import argparse
import ast
import concurrent.futures
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time

from machine import machine_line  # benchmarks/machine.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# module -> the fast tests that guard it (pytest arguments)
TARGETS = {
    "layers/drop_path": ["tests/test_drop_path.py", "tests/test_numbers.py"],
    "gating": ["tests/test_numbers.py", "tests/test_drop_path.py", "tests/test_selection.py"],
    "strategy": ["tests/test_strategy.py", "tests/test_numbers.py"],
    "evaluation": ["tests/test_statistics.py", "tests/test_numbers.py",
                   "tests/test_search.py::test_search_results_equal_a_fresh_model_in_fixed_mode"],
    "accounting": ["tests/test_numbers.py", "tests/test_model.py"],
    # pruning and inflation: models/prune.py and models/inflate.py dispatch to the backbones' hooks
    "models/densenet3d": ["tests/test_numbers.py", "tests/test_backbones.py", "tests/test_inflate.py",
                          "tests/test_export.py::test_pruned_model_drops_paths_and_matches_cost_accounting"],
    "models/resnet3d": ["tests/test_numbers.py", "tests/test_backbones.py", "tests/test_inflate.py"],
    "models/common": ["tests/test_numbers.py", "tests/test_inflate.py", "tests/test_backbones.py"],
    "trainer": ["tests/test_train.py::test_learning_rate_steps_at_the_configured_epochs",
                "tests/test_train.py::test_search_step_decays_every_kernel_but_the_gated_ones",
                "tests/test_train.py::test_regularizer_is_in_the_search_loss",
                "tests/test_train.py::test_search_step_on_two_replicas_equals_one_device",
                "tests/test_train.py::test_mirrored_two_devices_matches_one_device"],
    # the data and statistics modules (issue 29): the fast geometry / statistics tests first (-x stops at
    # the first failure), then the module's own tests
    "data/pipeline": ["tests/test_pipeline_rules.py", "tests/test_geometry.py",
                      "tests/test_data.py::test_pipeline_batches_are_the_exact_steps_rounded_to_the_replicas_only",
                      "tests/test_data.py::test_samplers_loop_short_videos_and_spread_views",
                      "tests/test_data.py::test_pipeline_is_deterministic_and_eval_views_fold_into_batch",
                      "tests/test_data.py::test_file_level_sharding_for_multiple_workers",
                      "tests/test_selection.py::test_holdout_is_never_read_by_the_training_pipeline",
                      "tests/test_serving.py::test_client_indices_are_the_pipelines_frames"],
    "data/video": ["tests/test_video.py", "tests/test_geometry.py", "tests/test_data.py",
                   "tests/test_serving.py::test_client_indices_are_the_pipelines_frames"],
    "selection": ["tests/test_statistics.py", "tests/test_selection.py", "tests/test_prior.py"],
    "export/serving": ["tests/test_geometry.py", "tests/test_serving.py",
                       "tests/test_export.py::test_ensemble_head_scales_and_abstains_by_hand",
                       "tests/test_export.py::test_ensemble_export_equals_the_evaluated_ensemble"],
    # the clip runtimes' serving functions moved from export/serving into deploy (issue 26, so the search can
    # score LiteRT files without importing the export): they stay in the data / statistics sample
    "deploy": ["tests/test_geometry.py", "tests/test_serving.py",
               "tests/test_export.py::test_ensemble_export_equals_the_evaluated_ensemble"],
    "export/client": ["tests/test_geometry.py", "tests/test_video.py", "tests/test_serving.py",
                      # the clip clients' command lines, run as a user runs them
                      "tests/test_export.py::test_onnx_client_example_classifies_a_video",
                      "tests/test_litert.py::test_litert_client_classifies_a_video"],
}
# only these functions of a module are mutated (None: every function)
FUNCTIONS = {
    "trainer": {"decayed_variables", "make_train_step", "replica_step", "train_step", "piecewise_lr"},
    "models/densenet3d": {"count_densenet3d", "block_layout", "_bn_constants", "_copy_bn", "_copy_conv",
                          "copy_dense_blocks", "inflate_densenet"},
    "models/resnet3d": {"count_resnet3d", "inflate_resnet"},
    "deploy": {"clip_logits", "clip_probabilities", "clip_shape", "clip_function"},
    "models/common": {"conv", "bn", "weights", "dense", "stem_count", "temporal", "_bn_weights", "has"},
}

SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
        ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.And: ast.Or, ast.Or: ast.And,
        ast.FloorDiv: ast.Div}


def _is_docstring_or_message(node, parents):
    parent = parents.get(node)
    return isinstance(parent, (ast.Expr, ast.JoinedStr, ast.FormattedValue, ast.Raise)) or isinstance(parent, ast.Call) \
        and isinstance(getattr(parent, "func", None), ast.Name) and parent.func.id.endswith("Error")


def mutation_points(tree, functions=None):
    """``(node_index, description)`` of every mutation in function bodies."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (functions is None or node.name in functions):
            for child in ast.walk(node):
                inside.add(child)
    points = []
    for index, node in enumerate(ast.walk(tree)):
        if node not in inside:
            continue
        where = getattr(node, "lineno", getattr(parents.get(node), "lineno", 0))
        if isinstance(node, ast.BinOp) and type(node.op) in SWAP:
            points.append((index, f"line {where}: {type(node.op).__name__} -> {SWAP[type(node.op)].__name__}"))
        elif isinstance(node, ast.BoolOp) and type(node.op) in SWAP:
            points.append((index, f"line {where}: {type(node.op).__name__} -> {SWAP[type(node.op)].__name__}"))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAP:
            points.append((index, f"line {where}: {type(node.ops[0]).__name__} -> {SWAP[type(node.ops[0])].__name__}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            points.append((index, f"line {where}: unary minus dropped"))
        elif isinstance(node, ast.Constant) and not _is_docstring_or_message(node, parents):
            if isinstance(node.value, bool):
                points.append((index, f"line {where}: {node.value} -> {not node.value}"))
            elif isinstance(node.value, int):
                points.append((index, f"line {where}: {node.value} -> {node.value + 1}"))
            elif isinstance(node.value, float):
                points.append((index, f"line {where}: {node.value} -> {2 * node.value if node.value else 1.0}"))
    return points


def mutate(source, index):
    tree = ast.parse(source)
    node = list(ast.walk(tree))[index]
    if isinstance(node, ast.BinOp) or isinstance(node, ast.BoolOp):
        node.op = SWAP[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops = [SWAP[type(node.ops[0])]()]
    elif isinstance(node, ast.UnaryOp):
        return ast.unparse(_replace(tree, node, node.operand))
    elif isinstance(node, ast.Constant):
        value = node.value
        node.value = (not value) if isinstance(value, bool) else value + 1 if isinstance(value, int) else \
            (2 * value if value else 1.0)
    return ast.unparse(tree)


def _replace(tree, old, new):
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
            elif isinstance(value, list) and old in value:
                value[value.index(old)] = new
    return tree


def run_tests(work, tests, timeout):
    env = dict(os.environ, PYTHONPATH=work, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    return "survived" if result.returncode == 0 else "killed"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default=",".join(TARGETS), help="Comma-separated keys of TARGETS.")
    parser.add_argument("--max_per_module", type=int, default=25, help="Mutants sampled per module (0: all).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=600, help="Seconds per mutant's test run.")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Mutants tested at once, each in its own copy of the repository.")
    parser.add_argument("--out", default=None, help="JSON file for the results.")
    args = parser.parse_args()
    from tf_stfusion.selection import wilson_interval

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    # one copy of the repository per job: a job writes its mutant into its own copy
    copies = queue.Queue()
    for _ in range(args.jobs):
        work = tempfile.mkdtemp(prefix="stfusion-mutation-")
        for name in listed:
            if os.path.isfile(os.path.join(REPO, name)):
                os.makedirs(os.path.dirname(os.path.join(work, name)) or work, exist_ok=True)
                shutil.copy2(os.path.join(REPO, name), os.path.join(work, name))
        copies.put(work)
    print(f"{machine_line()}; {args.jobs} job(s), each on its own copy of the repository", flush=True)

    plan = {}
    for module in args.modules.split(","):
        with open(os.path.join(REPO, "tf_stfusion", f"{module}.py")) as f:
            original = f.read()
        points = mutation_points(ast.parse(original), FUNCTIONS.get(module))
        chosen = points if not args.max_per_module or len(points) <= args.max_per_module else \
            sorted(random.Random(args.seed).sample(points, args.max_per_module))
        plan[module] = (original, points, chosen)

    def run_one(module, index):
        """The module's tests on its source mutated at ``index`` (``None``: unmutated): outcome, seconds."""
        original = plan[module][0]
        work = copies.get()
        path = os.path.join(work, "tf_stfusion", f"{module}.py")
        t0 = time.time()
        try:
            with open(path, "w") as f:
                f.write(original if index is None else mutate(original, index))
            return run_tests(work, TARGETS[module], args.timeout), time.time() - t0
        finally:
            with open(path, "w") as f:
                f.write(original)
            copies.put(work)

    results, started = {}, time.time()
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            # every module's unmutated run and mutants queued at once, so no job waits for a module to end
            futures = {module: (pool.submit(run_one, module, None),
                                [pool.submit(run_one, module, index) for index, _ in chosen])
                       for module, (_, _, chosen) in plan.items()}
            for module, (original, points, chosen) in plan.items():
                unmutated, mutants = futures[module]
                # a mutant only counts as killed if the tests pass without it
                if unmutated.result()[0] != "survived":
                    for future in (f for pending in futures.values() for f in pending[1]):
                        future.cancel()
                    raise SystemExit(f"{module}: the tests fail on the unmutated code; fix them first")
                outcomes, seconds = [], unmutated.result()[1]
                for i, ((_, what), future) in enumerate(zip(chosen, mutants)):
                    outcome, took = future.result()
                    seconds += took
                    outcomes.append({"change": what, "outcome": outcome})
                    print(f"  {module} [{i + 1}/{len(chosen)}] {what}: {outcome} ({took:.0f}s)", flush=True)
                killed = sum(o["outcome"].startswith("killed") for o in outcomes)
                low, high = wilson_interval(killed, len(outcomes)) if outcomes else (0.0, 0.0)
                results[module] = {"mutation_points": len(points), "tried": len(outcomes), "killed": killed,
                                   "kill_rate": killed / max(len(outcomes), 1), "ci95": [low, high],
                                   "survivors": [o["change"] for o in outcomes if o["outcome"] == "survived"],
                                   "seconds": round(seconds, 1)}
                r = results[module]
                print(f"{module}: {r['killed']}/{r['tried']} killed ({100 * r['kill_rate']:.0f}%, 95% CI "
                      f"[{100 * low:.0f}, {100 * high:.0f}]) of {r['mutation_points']} mutation points, "
                      f"{r['seconds']:.0f} test-seconds; survivors: {r['survivors'] or 'none'}", flush=True)
                if args.out:  # after every module, so a run stopped early keeps what it measured
                    with open(args.out, "w") as f:
                        json.dump(results, f, indent=1)
    finally:
        while not copies.empty():
            shutil.rmtree(copies.get(), ignore_errors=True)
    total = sum(r["tried"] for r in results.values())
    killed = sum(r["killed"] for r in results.values())
    if total:
        low, high = wilson_interval(killed, total)
        print(f"all: {killed}/{total} killed ({100 * killed / total:.0f}%, 95% CI [{100 * low:.0f}, {100 * high:.0f}]); "
              f"{time.time() - started:.0f}s wall clock")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
