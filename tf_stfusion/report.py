"""Plots and the markdown report of a strategy search.

``fusion_plot``: the paper's Fig. 4 -- per fusion layer, bars of the S, ST and
S+ST unit probabilities (from the Eq. 7 marginals) and, as a line, the unit the
best strategy chose. ``pareto_plot``: top-1 against GFLOPs of every evaluated
strategy (a marker per racing sample size), the Pareto front over the
strategies scored on the whole split, the fixed strategies and the best one.
``write_report``: the paper's Table 2 (Opt vs S / ST / S+ST) and what the
marginals say, block by block -- statements computed from the numbers.
"""

import os
import statistics

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from tf_stfusion.fileio import atomic_write_text  # noqa: E402
from tf_stfusion.units import FIXED_STRATEGIES, UNITS  # noqa: E402

UNIT_LEVELS = {"none": 0, "S": 1, "ST": 2, "S+ST": 3}
COLOURS = {"S": "#4C72B0", "ST": "#DD8452", "S+ST": "#55A868"}


def _save(fig, path):
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def fusion_plot(probs, best_units, path, title="Layer-level fusion preference"):
    layers = [row["layer"] for row in probs["layers"]]
    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.32 * n + 2), 4.2))
    width = 0.27
    for i, unit in enumerate(FIXED_STRATEGIES):
        xs = [x + (i - 1) * width for x in range(n)]
        ax.bar(xs, [row[unit] for row in probs["layers"]], width, label=f"P({unit})", color=COLOURS[unit])
    ax.set_ylim(0, 1)
    ax.set_ylabel("unit probability (Eq. 7 marginals)")
    ax.set_xticks(range(n))
    ax.set_xticklabels(layers, rotation=90, fontsize=7 if n > 20 else 9)
    ax.set_xlim(-0.6, n - 0.4)
    # Block boundaries help reading a 58-layer DenseNet.
    blocks = [name.split("/")[0] for name in layers]
    for x in range(1, n):
        if blocks[x] != blocks[x - 1]:
            ax.axvline(x - 0.5, color="grey", lw=0.6, ls=":")
    twin = ax.twinx()
    twin.plot(range(n), [UNIT_LEVELS[u] for u in best_units], color="black", marker="o", ms=3, lw=1.2,
              label="best strategy's unit")
    twin.set_yticks(list(UNIT_LEVELS.values()))
    twin.set_yticklabels(list(UNIT_LEVELS))
    twin.set_ylim(-0.3, 3.3)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper center", ncol=4, fontsize=8,
              bbox_to_anchor=(0.5, 1.13), frameon=False)
    ax.set_title(title, pad=24)
    _save(fig, path)


ROUND_MARKERS = ("^", "v", "D", "P", "X")  # raced-out strategies: one per sample size (the whole split: "o")


PARETO_AXES = {"gflops": "GFLOPs per clip", "latency_ms": "predicted latency per clip, batch 1 (ms)"}


def pareto_plot(rows, front, best, path, cost="gflops", budget=0.0):
    """Top-1 on the selection split against ``cost`` (a key of ``PARETO_AXES``:
    GFLOPs, or the latency table's predicted ms). Racing scores most strategies
    on a prefix of the split only, so each sample size gets its own marker (the
    legend says how many videos); the Pareto front is drawn over the strategies
    scored on the whole split only (``front``), as a step line with its points;
    ``budget`` (same unit as ``cost``; 0: none) as a dashed vertical line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sampled = [r for r in rows if r["kind"] == "sampled"]
    sizes = sorted({r["num_videos"] for r in sampled})
    for i, size in enumerate(sizes):
        group = [r for r in sampled if r["num_videos"] == size]
        whole = size == sizes[-1]
        ax.scatter([r[cost] for r in group], [100 * r["top1"] for r in group], s=16 if whole else 10,
                   marker=ROUND_MARKERS[min(i, len(ROUND_MARKERS) - 1)] if not whole else "o",
                   color="#555555" if whole else "#BBBBBB", alpha=1.0 if whole else 0.7,
                   label=f"sampled, {size} videos{' (whole split)' if whole else ' (raced out)'}: {len(group)}")
    ax.plot([r[cost] for r in front], [100 * r["top1"] for r in front], color="#4C72B0", lw=1.2,
            marker="o", ms=5, mfc="none", drawstyle="steps-post", label="Pareto front (whole split)", zorder=4)
    for r in rows:
        if r["kind"] == "fixed":
            unit = r["id"].split("-", 1)[1]
            ax.scatter([r[cost]], [100 * r["top1"]], marker="s", s=40, color=COLOURS[unit])
            ax.annotate(unit, (r[cost], 100 * r["top1"]), textcoords="offset points", xytext=(5, 4))
    ax.scatter([best[cost]], [100 * best["top1"]], marker="*", s=160, color="#C44E52", label="best (Opt)",
               zorder=5)
    if budget:
        unit = "ms" if cost == "latency_ms" else "GFLOPs"
        ax.axvline(budget, color="#C44E52", ls="--", lw=1, label=f"budget: {budget} {unit}")
    ax.set_xlabel(PARETO_AXES[cost])
    ax.set_ylabel(f"top-1 on {rows[0].get('split', 'the selection split')} (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)


# Below this, a difference of marginals (or unit probabilities) is not called a preference.
MARGINAL_THRESHOLD = 0.05


def observations(probs, rows):
    """Sentences the marginals and results support, computed from them.

    A preference is stated only with its size and only when it reaches
    ``MARGINAL_THRESHOLD``; otherwise the sentence says there is none.
    """
    gates = probs["gates"]
    lines = []
    mean = {p: statistics.fmean(g["marginal"] for g in gates if g["path"] == p) for p in ("S", "ST", "D1")}
    by_layer = {}
    for g in gates:
        by_layer.setdefault(g["layer"], {})[g["path"]] = g["marginal"]
    favour = {"ST": sum(m["ST"] - m["S"] >= MARGINAL_THRESHOLD for m in by_layer.values()),
              "S": sum(m["S"] - m["ST"] >= MARGINAL_THRESHOLD for m in by_layer.values())}
    even = len(by_layer) - favour["ST"] - favour["S"]
    gap = mean["ST"] - mean["S"]
    head = (f"Mean path marginal (Eq. 7): S {mean['S']:.3f}, ST {mean['ST']:.3f}, D1 {mean['D1']:.3f}; "
            f"{favour['ST']} of {len(by_layer)} layers favour ST, {favour['S']} favour S, {even} within "
            f"{MARGINAL_THRESHOLD} of even")
    if abs(gap) >= MARGINAL_THRESHOLD:
        more, less = ("ST", "S") if gap > 0 else ("S", "ST")
        lines.append(f"{head} -- the template prefers {more} paths overall (mean marginal {abs(gap):.3f} higher "
                     f"than {less}).")
    else:
        lines.append(f"{head} -- no overall preference: the mean marginals differ by {abs(gap):.3f}, below the "
                     f"{MARGINAL_THRESHOLD} threshold.")
    blocks = {}
    for row in probs["layers"]:
        blocks.setdefault(row["layer"].split("/")[0], []).append(row)
    for block, layer_rows in blocks.items():
        avg = {u: statistics.fmean(r[u] for r in layer_rows) for u in UNITS}
        first, second = sorted(FIXED_STRATEGIES, key=avg.get, reverse=True)[:2]
        if avg[first] - avg[second] >= MARGINAL_THRESHOLD:
            verdict = f"most likely unit {first} (by {avg[first] - avg[second]:.2f} over {second})"
        else:
            verdict = f"no clear unit ({first} and {second} within {MARGINAL_THRESHOLD})"
        lines.append(f"{block} ({len(layer_rows)} layers): mean P(S) {avg['S']:.2f}, P(ST) {avg['ST']:.2f}, "
                     f"P(S+ST) {avg['S+ST']:.2f}, P(none) {avg['none']:.2f}; {verdict}.")
    skipped = [r["layer"] for r in probs["layers"] if r["none"] > 0.5]
    if skipped:
        lines.append(f"{len(skipped)} layer(s) are more likely skipped than used: {', '.join(skipped[:12])}"
                     + (" ..." if len(skipped) > 12 else "") + ".")
    sampled = [r for r in rows if r["kind"] == "sampled"]
    if sampled:
        full = max(r["num_videos"] for r in rows)
        finished = [r["top1"] for r in sampled if r["num_videos"] == full]
        line = (f"Sampled strategies on {sampled[0].get('split', 'the selection split')}: top-1 mean "
                f"{100 * statistics.fmean(finished):.2f}%, min {100 * min(finished):.2f}%, max "
                f"{100 * max(finished):.2f}% over the {len(finished)} scored on all {full} videos")
        if len(finished) < len(sampled):
            line += (f"; racing dropped the other {len(sampled) - len(finished)} in earlier rounds (see "
                     "`dropped_round` in strategies.jsonl)")
        lines.append(line + ".")
    return lines


def percent(value, ci=None, digits=2):
    """``value`` (a fraction) in percent, with its interval's bounds to 0.1 if given."""
    text = f"{100 * value:.{digits}f}"
    return text if ci is None else f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _points(value, ci):
    return f"{100 * value:+.2f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def comparison_table(comparison):
    """Table 2 as markdown rows: Opt vs S / ST / S+ST on the report split."""
    from tf_stfusion.selection import INDISTINGUISHABLE

    split = comparison["report_split"]
    lines = [f"| strategy | top-1 on `{split}` (%) [95% CI] | top-5 (%) | Opt minus this, top-1 points [95% CI] | "
             "Opt vs this | params (M) | GFLOPs |", "|---|---|---|---|---|---|---|"]
    for name, r in comparison["strategies"].items():
        if name == "Opt":
            diff, verdict = "--", "--"
        else:
            d = comparison["paired_vs_opt"][name]
            diff = _points(d["diff"], d["ci"])
            verdict = {"better": "Opt better", "worse": "Opt worse"}.get(d["verdict"], INDISTINGUISHABLE)
        lines.append(f"| {name} | {percent(r['top1'], r['top1_ci'])} | {percent(r['top5'])} | {diff} | {verdict} | "
                     f"{r['params'] / 1e6:.3f} | {r['gflops']:.3f} |")
    return lines


WIDE_LATENCY_ERROR = 0.25  # a validated error above this makes the budget a loose one (report.md says so)


def validated_line(latency):
    """report.md's words on the latency table's validated error (what the export allows over the budget)."""
    error = latency.get("latency_validated_error")
    if error is None:
        return ("the table was never validated (benchmarks/latency_table.py --table --record_error), so the export "
                "allows its file nothing over the budget")
    line = f"the table's validated error is {100 * error:.1f}%, which the export allows its file over the budget"
    if error > WIDE_LATENCY_ERROR:
        line += (f" -- **a wide error**: a file that far over the budget would be shipped; validate the table again "
                 "on a quiet machine with more strategies (benchmarks/latency_table.py --strategies=20)")
    return line



def budget_drops(rows):
    """report.md's line on the strategies racing dropped for a budget (their
    ``dropped_because`` names it: ``search.over_budget``), or no lines."""
    reasons = [r.get("dropped_because") or "" for r in rows if r["kind"] == "sampled"]
    counts = {kind: sum(f"{kind} budget" in why for why in reasons) for kind in ("GFLOPs", "latency")}
    if not any(counts.values()):
        return []
    said = [f"{n} for the {kind} budget" for kind, n in counts.items() if n]
    return [f"Racing dropped {' and '.join(said)} of the {len(reasons)} sampled strategies after its first round "
            "(`dropped_because` in `strategies.jsonl`).", ""]


def write_report(path, rows, best, probs, plan, comparison, max_gflops=0.0, sections=(), latency=None):
    """``report.md``; ``sections``: more markdown lines, after the Table 2 part;
    ``latency``: the latency budget's record (``search.latency_budget``), if any."""
    from tf_stfusion.selection import CI_METHOD, PAIRED_METHOD

    report = comparison["strategies"]["Opt"]
    lines = ["# Fusion strategy search", "",
             f"Checkpoint `{plan['checkpoint']}`, {plan['num_samples']} sampled strategies (seed {plan['seed']}) and "
             f"the fixed S / ST / S+ST, {plan['eval_clips']} clip(s) per video, every strategy with the "
             "template's weights (no retraining).", ""]
    if comparison["same_split"]:
        lines += [f"**{comparison['note'].capitalize()}.** Opt is the best of {plan['num_samples']} sampled "
                  f"strategies on `{comparison['report_split']}` and is reported on the same "
                  f"{report['num_videos']} videos: its accuracy is biased upwards (the maximum of many noisy "
                  "estimates). Train with `--select_split=holdout` (the default) for an honest number.", ""]
    else:
        lines += [f"**Selection protocol.** Opt is the best of {plan['num_samples']} sampled strategies on the "
                  f"selection split `{comparison['selected_on']}` ({best['num_videos']} held-out training videos "
                  f"that the template was not trained on, grouped: {comparison.get('holdout_grouping') or 'none'}; "
                  f"there Opt scored {percent(best['top1'], best['top1_ci'])}). "
                  f"Every number below is measured on `{comparison['report_split']}` ({report['num_videos']} "
                  "videos), which played no part in the choice.", ""]
    if comparison.get("leakage_warning"):
        lines += [f"**Warning:** {comparison['leakage_warning']}.", ""]
    if max_gflops:
        lines += [f"Opt is the best sampled strategy within {max_gflops} GFLOPs.", ""]
    lines += budget_drops(rows)
    if latency:
        lines += [f"Opt is the best sampled strategy predicted to take at most {latency['max_latency_ms']} ms per clip "
                  f"(batch 1): {best['latency_ms']:.2f} ms predicted by `{latency['latency_table']}` "
                  f"({latency['latency_runtime']}; {latency['latency_machine']}); {validated_line(latency)}.", ""]
        if latency.get("latency_precision_note"):
            lines += [f"**Note:** {latency['latency_precision_note']}.", ""]
    lines += comparison_table(comparison)
    lines += ["", f"Top-1 intervals: {CI_METHOD}. Differences: Opt minus the fixed strategy on the same videos, "
              f"{PAIRED_METHOD}; a strategy is called better only when that interval excludes 0.", ""]
    counts = {u: best["units"].count(u) for u in UNIT_LEVELS}
    lines += [f"Opt (`{best['id']}`) uses " + ", ".join(f"{counts[u]} {u}" for u in UNITS)
              + " layers; it is written to `best.json`.", ""]
    lines += list(sections)
    prior = comparison.get("prior")
    if prior:
        lines += ["## Prior diagnostics", "", f"- {prior['summary']}."]
        if comparison.get("preflight"):
            lines.append(f"- Before the search phase: {comparison['preflight']['message']}.")
        for warning in (prior["warning"], comparison.get("chance_warning")):
            if warning:
                lines.append(f"- **Warning:** {warning}")
        lines.append("")
    lines += ["## What the marginals show", ""]
    lines += [f"- {line}" for line in observations(probs, rows)]
    lines += ["", "Figures: `fusion.png` (per-layer unit probabilities and Opt's units), `pareto.png` "
              f"(top-1 on `{comparison['selected_on']}` vs GFLOPs of every evaluated strategy).", ""]
    atomic_write_text(path, "\n".join(lines))


# -- the posterior predictive: ensembles, calibration, abstention ------------------------
def _shown_ensemble(posterior):
    """The ensemble the figures show: 8 members when measured, else the largest."""
    sizes = [m for m in posterior["sizes"] if m > 1] or posterior["sizes"]
    return f"ensemble-{8 if 8 in sizes else sizes[-1]}"


def calibration_plot(posterior, path):
    """Reliability diagrams (accuracy against mean confidence per bin) of Opt, an
    ensemble and S / ST / S+ST on the report split, with their ECE."""
    names = ["Opt", _shown_ensemble(posterior)] + [n for n in FIXED_STRATEGIES if n in posterior["models"]]
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.3), sharey=True)
    for ax, name in zip(axes, names):
        row = posterior["models"][name]
        diagram = row["reliability"]
        edges = diagram["edges"]
        width = edges[1] - edges[0]
        filled = [i for i, c in enumerate(diagram["count"]) if c]
        ax.bar([edges[i] for i in filled], [diagram["accuracy"][i] for i in filled], width=width, align="edge",
               color="#4C72B0", edgecolor="white", label="accuracy")
        ax.bar([edges[i] for i in filled], [diagram["confidence"][i] - diagram["accuracy"][i] for i in filled],
               bottom=[diagram["accuracy"][i] for i in filled], width=width, align="edge", fill=False,
               edgecolor="#C44E52", hatch="///", lw=0.6, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}\nECE {100 * row['ece']:.1f}% [{100 * row['ece_ci'][0]:.1f}, "
                     f"{100 * row['ece_ci'][1]:.1f}]", fontsize=9)
        ax.set_xlabel("confidence (max probability)")
    axes[0].set_ylabel(f"top-1 on {posterior['report_split']}")
    axes[0].legend(fontsize=7, loc="upper left")
    _save(fig, path)


RANKINGS = {"max_probability": "max probability", "entropy": "predictive entropy",
            "mutual_information": "disagreement (mutual information)"}


def risk_coverage_plot(posterior, path):
    """Top-1 of the videos kept against the share kept (ranked by confidence), for
    Opt and an ensemble, with the abstention threshold's point on the report split."""
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    shown = _shown_ensemble(posterior)
    styles = {"max_probability": "-", "entropy": "--", "mutual_information": ":"}
    for name, colour in (("Opt", "#555555"), (shown, "#4C72B0")):
        selective = posterior["models"][name]["selective"]
        for ranking, curve in selective["curves"].items():
            ax.plot([100 * c for c in curve["coverage"]], [100 * (1 - r) for r in curve["risk"]], ls=styles[ranking],
                    color=colour, lw=1.3, label=f"{name}, by {RANKINGS[ranking]} (AURC "
                                                f"{selective['aurc'][ranking]:.4f})")
        kept = selective["threshold"]["val"]
        if kept["accuracy"] is not None:
            ax.scatter([100 * kept["coverage"]], [100 * kept["accuracy"]], color=colour, marker="o", zorder=5)
    ax.axhline(100 * posterior["target_accuracy"], color="#C44E52", lw=0.8, ls="-.",
               label=f"target {100 * posterior['target_accuracy']:.0f}% (threshold chosen on {posterior['fit_split']})")
    ax.set_xlabel(f"coverage: share of {posterior['report_split']} videos kept (%)")
    ax.set_ylabel("top-1 of the videos kept (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _interval(value, ci, scale=1.0, digits=3):
    return f"{scale * value:.{digits}f} [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"


def posterior_table(posterior):
    """Markdown rows: top-1, NLL, ECE (intervals) and the paired difference to Opt."""
    lines = [f"| model | networks | top-1 on `{posterior['report_split']}` (%) [95% CI] | this minus Opt, top-1 "
             "points [95% CI] | NLL [95% CI] | ECE (%) [95% CI] | GFLOPs |", "|---|---|---|---|---|---|---|"]
    for name, r in posterior["models"].items():
        d = r["vs_opt"]
        diff = "--" if d is None else f"{_points(d['diff'], d['ci'])} ({d['verdict']})"
        lines.append(f"| {name} | {r['members']} | {percent(r['top1'], r['top1_ci'])} | {diff} | "
                     f"{_interval(r['nll'], r['nll_ci'])} | {_interval(r['ece'], r['ece_ci'], 100, 1)} | "
                     f"{r['gflops']:.3f} |")
    return lines


def selective_table(posterior):
    """Markdown rows: temperature, ECE before / after, AURC, the abstention threshold."""
    split, fit = posterior["report_split"], posterior["fit_split"]
    lines = [f"| model | T (fitted on `{fit}`) | ECE (%) before -> after | NLL before -> after | AURC by max prob / "
             f"entropy / disagreement | threshold (max prob) | coverage on `{split}` (%) [95% CI] | top-1 of kept "
             "(%) [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for name, r in posterior["models"].items():
        if "selective" not in r:
            continue
        s = r["selective"]
        kept = s["threshold"]["val"]
        aurc = " / ".join(f"{s['aurc'][k]:.4f}" if k in s['aurc'] else "--" for k in RANKINGS)
        accuracy = "--" if kept["accuracy"] is None else percent(kept["accuracy"], kept["accuracy_ci"])
        threshold = f"{kept['threshold']:.3f}" + ("" if s["threshold"]["reachable"] else " (target not reached)")
        lines.append(f"| {name} | {s['temperature']:.3f} | {100 * r['ece']:.1f} -> "
                     f"{_interval(s['scaled']['ece'], s['scaled']['ece_ci'], 100, 1)} | {r['nll']:.3f} -> "
                     f"{s['scaled']['nll']:.3f} | {aurc} | {threshold} | {percent(kept['coverage'], kept['coverage_ci'])} "
                     f"| {accuracy} |")
    return lines


def posterior_lines(posterior):
    """The report's section on the posterior predictive (``search.posterior_evaluation``)."""
    split, fit = posterior["report_split"], posterior["fit_split"]
    members = posterior["members"]
    source = ("sampled strategies" if posterior.get("members_from", "samples") == "samples" else
              "racing survivors (the sampled strategies scored on the whole selection split)")
    lines = ["## The posterior predictive: ensembles, calibration, abstention", "",
             f"`ensemble-M`: the mean video scores of the first M {source} ({members[0]} ... {members[-1]}, draws "
             "from the learned gates), each a pruned network; its GFLOPs are the members' sum. Every number is on "
             f"`{split}` ({posterior['models']['Opt']['num_videos']} videos).", ""]
    if posterior["note"]:
        lines += [f"**Temperature and threshold {posterior['note']}**: the run selected on `{split}`.", ""]
    lines += posterior_table(posterior)
    lines += ["", f"Top-1: {posterior['interval_methods']['top1']}; NLL and ECE ({posterior['ece_method']}): "
              f"{posterior['interval_methods']['nll_ece']}; differences: {posterior['interval_methods']['vs_opt']}.",
              ""]
    for name, r in posterior["models"].items():
        if name.startswith("ensemble-") and r["vs_opt"]:
            d = r["vs_opt"]
            lines.append(f"- {name} minus Opt: {_points(d['diff'], d['ci'])} top-1 points ({d['verdict']}; right only "
                         f"with the ensemble on {d['only_a']} videos, only with Opt on {d['only_b']}).")
    lines += ["", f"Temperature scaling (one scalar per model, by NLL on `{fit}`) and selective prediction: videos "
              "ranked by the scaled maximum probability, by minus the predictive entropy, or (ensembles) by minus "
              "the members' mutual information; AURC is the mean error rate of the kept videos over every coverage "
              f"(lower is better). The threshold is the lowest at which `{fit}`'s kept videos reach "
              f"{100 * posterior['target_accuracy']:.0f}% top-1 (`--target_accuracy`).", ""]
    lines += selective_table(posterior)
    lines += ["", "Figures: `calibration.png` (reliability diagrams), `risk_coverage.png` (top-1 of the kept videos "
              "against coverage). `stfusion-export --ensemble=M` exports an ensemble with its temperature and "
              "threshold.", ""]
    return lines
