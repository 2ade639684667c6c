"""One experiment's section: provenance, setup, table, and a reading computed from the rows.

The readings are computed from the numbers so that they stay true when the numbers are re-run.
"""

from __future__ import annotations

import json
from typing import Any

from server.report.format import pct
from simulations.harness.publish.audit import audit_reading, audit_setup
from simulations.harness.publish.provenance import RESULTS, meta_line, weights_description
from simulations.harness.results import write_outputs

EXPERIMENTS = ("baselines", "privacy-utility", "patient-privacy", "transfer", "cross-domain", "heterogeneity",
               "stain-strategy", "audit")


def experiment_section(name: str) -> str:
    found = [RESULTS / name, RESULTS / f"{name}-quick"]
    parts = []
    for folder in found:
        if not (folder / "results.json").exists():
            continue
        result = json.loads((folder / "results.json").read_text())
        write_outputs(result, folder)  # tables and plots always rendered from the raw results
        size = "quick size" if result["quick"] else "full size"
        parts.append(f"### {name} ({size})\n\n{meta_line(result)}; {result['seconds'] / 60:.1f} min.\n")
        parts.append((audit_setup(result) if name == "audit" else _setup_line(result)) + "\n")
        if result.get("weights"):
            described = result.get("weights_description") or weights_description(result["weights"])
            names = result["weights"].values() if isinstance(result["weights"], dict) else [result["weights"]]
            parts.append(f"Backbone: {', '.join(f'`{n}`' for n in names)} ({described}).\n")
        if result.get("weights_normalised"):
            parts.append(f"Backbone of the `normalize` rows: `{result['weights_normalised']}` "
                         f"({weights_description(result['weights_normalised'])}).\n")
        parts.append((folder / "table.md").read_text())
        parts.append(reading(result))
        if (folder / "pilots.md").exists():  # hand-made exploration notes kept beside the results
            parts.append("\n" + (folder / "pilots.md").read_text())
        parts.append(f"\n![{name}](results/{folder.name}/plot.png)\n")
    if not parts:
        return f"### {name}\n\nNot run yet: `python -m simulations.harness.experiment {name} --quick`.\n"
    return "\n".join(parts)


def _setup_line(result: dict[str, Any]) -> str:
    """The federated setup shared by the experiment's rows (what varies is in the table)."""
    scenarios = [r["scenario"] for r in result["rows"] if r.get("scenario")]
    if not scenarios:
        return ""
    keys = ("sites", "partitioning", "alpha", "image_size", "rounds", "policy", "batch_size", "min_records_per_step",
            "round_acceptance", "lr", "local_epochs", "fraction_train", "seed")
    first = scenarios[0]
    shown = [k for k in keys if k in first]  # results from before a key existed do not name it
    text = ", ".join(f"{k.replace('_', ' ')} {first[k]}" + ("" if all(s.get(k) == first[k] for s in scenarios)
                                                           else " (unless the row says otherwise)") for k in shown)
    return (f"Setup (shared by all rows): {text}. Pooled and local-only baselines train non-privately for "
            "rounds x local epochs epochs, the same number of passes over the data as FedAvg.")


def _mean_accuracy(rows: list[dict[str, Any]]) -> float:
    return sum(r["accuracy"] for r in rows) / len(rows)


def _reading_privacy_utility(rows: list[dict[str, Any]]) -> str:
    accs = [r["accuracy"] for r in rows]
    overlap = max(r["accuracy_ci95"][0] for r in rows) <= min(r["accuracy_ci95"][1] for r in rows)
    text = (
        f"Reading: the backbone alone (round 0) scores {pct(rows[0]['rounds'][0]['accuracy'])}; federated training "
        f"reaches {pct(min(accs))}-{pct(max(accs))} across ε, a spread of {100 * (max(accs) - min(accs)):.1f} points"
        + (" with overlapping 95% CIs." if overlap else "; the 95% CIs do not all overlap.")
    )
    if overlap:
        text += (f" At this size (few local steps per site, policy `{rows[0]['scenario']['policy']}`) the noise that "
                 "even the smallest ε needs costs no measurable accuracy; a curve that bends needs smaller ε, longer "
                 "training or more trainable values.")
    return text


def _reading_heterogeneity(rows: list[dict[str, Any]]) -> str:
    clean = [r for r in rows if not r["scenario"].get("stain_shift")]
    shifted = [r for r in rows if r["scenario"].get("stain_shift")]
    if not clean or not shifted:
        return ""
    spread = max(r["accuracy"] for r in clean) - min(r["accuracy"] for r in clean)
    cost = _mean_accuracy(clean) - _mean_accuracy(shifted)
    text = (
        f"Reading: label skew alone moves accuracy by at most {100 * spread:.1f} points "
        f"(mean {pct(_mean_accuracy(clean))}); per-site stain shift costs {100 * cost:.1f} points on average "
        f"(mean {pct(_mean_accuracy(shifted))})."
    )
    if cost > spread:
        text += (" Here scanner/stain variation hurts more than class mix; stain normalisation or augmentation "
                 "at the sites is the obvious next step.")
    return text


def _reading_transfer(rows: list[dict[str, Any]]) -> str:
    scratch = {(r["scenario"]["policy"], r["scenario"]["dp"]): r for r in rows if r["scenario"].get("weights") == "none"}
    pairs = [
        (r["scenario"]["policy"], r["scenario"]["dp"], r["accuracy"] - scratch[key]["accuracy"])
        for r in rows
        if r["scenario"].get("weights") not in (None, "none")
        and (key := (r["scenario"]["policy"], r["scenario"]["dp"])) in scratch
    ]
    if not pairs:
        return ""
    dp_gains = [g for _, dp, g in pairs if dp]
    text = ", ".join(f"{p} {'DP' if dp else 'non-DP'} {100 * g:+.1f}" for p, dp, g in pairs)
    return (
        f"Reading: pretraining on the public share gains (points, pretrained minus scratch): {text}. "
        f"Under DP the mean gain is {100 * sum(dp_gains) / max(1, len(dp_gains)):+.1f} points. Rounds here are "
        "few, so scratch rows mostly show how far each policy gets from random features in that budget."
    )


def _reading_patient_privacy(result: dict[str, Any]) -> str:
    rows = [r for r in result["rows"] if r.get("epsilon") and not r.get("lever")]
    cost = result["targets"]["patient_minus_patch_points"]
    patch8 = next((r for r in rows if r["privacy_unit_asked"] == "patch" and r["epsilon"] == 8.0), None)
    patient8 = next((r for r in rows if r["privacy_unit_asked"] == "patient" and r["epsilon"] == 8.0), None)
    text = ("Reading: protecting the patient instead of the patch changes accuracy by "
            + ", ".join(f"{v:+.1f} points at ε = {k}" for k, v in cost.items())
            + " (patient-level minus patch-level, same ε per site).")
    if patch8 and patient8:
        text += (f" What the guarantee means differs far more: at ε = 8 a patch-level run protects a patient of up "
                 f"to {result['largest_patient_patches']} patches only at ε ≤ {patch8['epsilon_per_patient']:.3g} "
                 f"(an upper bound by group conversion, `common.privacy.units`; in practice no protection), while "
                 f"the patient-level run guarantees ε = {patient8['epsilon_per_patient']:.3g} per patient and "
                 f"ε ≤ {patient8['epsilon_per_patch']:.3g} per patch (a patch removed from a patient is two "
                 "patient-level steps apart; this Rényi weak-triangle bound is conservative and grows faster than "
                 "the patient ε, it is not a measured leak; a patient's only patch is covered by the patient ε). Each step samples whole patients (q = 1/min(patients, "
                 "patches/batch, patients/min-records-per-step)) and at most "
                 f"{result['max_patches_per_patient']} patches of each "
                 "(`max-patches-per-patient`), so a patient-level step sees fewer patients' worth of signal; "
                 "that is what patient privacy costs.")
    return text + _reading_levers(result)


def _reading_levers(result: dict[str, Any]) -> str:
    """Issue 23: the gap to pooled per ε, never-worse, and what each lever row says against the default row."""
    t = result["targets"]
    if "patient_minus_pooled_points" not in t:
        return ""
    met = {True: "met", False: "NOT met"}
    text = ("\n\nPatient privacy at little cost (issue 23). Default patient-level rows minus pooled non-private: "
            + ", ".join(f"{v:+.1f} points at ε = {k}" for k, v in t["patient_minus_pooled_points"].items())
            + f" (targets: ε = 2 within 2 points, {met[t['epsilon_2_within_2_points']]}; ε = 1 within 5 points, "
            f"{met[t['epsilon_1_within_5_points']]}). Never worse than the start on the server's validation data: "
            + ", ".join(f"ε = {k} {'yes' if v else 'NO'}" for k, v in t["never_worse_on_validation"].items()) + ".")
    default = {r["epsilon"]: r for r in result["rows"]
               if r.get("privacy_unit_asked") == "patient" and r.get("epsilon") and not r.get("lever")}
    levers: dict[str, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        if r.get("lever"):
            levers.setdefault(r["lever"], []).append(r)
    for lever, lever_rows in levers.items():
        diffs = []
        for r in lever_rows:
            d = default.get(r["epsilon"])
            if d is None:
                continue
            val = ""
            if d.get("validation") and r.get("validation"):
                val = f", validation {100 * (d['validation']['end'] - r['validation']['end']):+.1f}"
            diffs.append(f"ε = {r['epsilon']:g}: test {100 * (d['accuracy'] - r['accuracy']):+.1f}{val}")
        text += f" Defaults minus \"{lever}\" (points): {'; '.join(diffs)}."
    stayed = [r["label"] for r in result["rows"]
              if r.get("validation") and r["validation"].get("kept_rounds") == [0] and r.get("kind") == "federated"]
    if stayed:
        text += (" Kept no round (every round's model scored below the start on the server's validation data, so "
                 "the job ended with its starting model): " + "; ".join(stayed) + ".")
    return text + " One run per row: differences of about a point are within run-to-run noise."


def _start_note(rows: list[dict[str, Any]]) -> str:
    """What the starting backbones score alone (round 0), and which rows ended above that."""
    starts: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("rounds"):
            starts.setdefault(pct(r["rounds"][0]["accuracy"]), []).append(r)
    if not starts:
        return ""
    parts = []
    for start, group in starts.items():
        above = sum(r["accuracy"] > r["rounds"][0]["accuracy"] for r in group)
        parts.append(f"{start} ({len(group)} rows, {above} of them end above it)")
    return (" The starting model alone (round 0, before any site trains) scores " + "; ".join(parts)
            + ": a lever that ends near its start may be one that moved the model least.")


def _reading_stain_strategy(result: dict[str, Any]) -> str:
    t = result.get("targets") or {}
    if not t:
        return ""
    met = {True: "met", False: "NOT met"}
    stains = ", ".join(f"{name} {pct(value)}" for name, value in t["harsh_by_stain"].items())
    strategies = ", ".join(f"{name} {pct(value)}" for name, value in t["harsh_by_strategy"].items())
    repeats = "; ".join(f"{cell}: " + ", ".join(pct(v) for v in values) for cell, values in t["repeated"].items())
    return (
        f"Reading: against the mild setting, the harsh one costs FedAvg without stain handling {t['loss_points']:.1f} "
        f"points ({pct(t['mild_reference_accuracy'])} → {pct(t['harsh_reference_accuracy'])}). The best lever on the "
        f"harsh setting, {t['best_lever']}, reaches {pct(t['best_harsh_accuracy'])}: it recovers "
        f"{t['recovered_points']:+.1f} points (half the loss: {met[t['recovers_half']]}; ≥ 86%: "
        f"{met[t['reaches_target_accuracy']]}) and "
        + (f"changes the mild setting by {t['mild_change_points']:+.1f} points (no loss: {met[t['no_mild_loss']]})."
           if t["mild_change_points"] is not None else "was not run on the mild setting.")
        + f" Harsh-setting mean by stain handling: {stains}; by strategy: "
        f"{strategies}."
        + _start_note(result["rows"])
        + (f" Cells run more than once (same partition, fresh DP noise each run; their mean is what counts above): "
           f"{repeats}. The spread between runs of one cell is the yardstick for every other difference here."
           if repeats else " One run per cell: differences within a row's 95% CI are not evidence.")
    )


def _reading_cross_domain(result: dict[str, Any]) -> str:
    t = result.get("targets") or {}
    cells = {k: v for k, v in t.items() if isinstance(v, dict)}
    if not cells:
        return ""
    met = [k for k, v in cells.items() if v["remedy_reaches_scratch"]]
    missed = [k for k, v in cells.items() if not v["remedy_reaches_scratch"]]
    lines = "; ".join(
        f"{key}: backbone's statistics {v.get('pretrained_backbone_minus_scratch_points', float('nan')):+.1f}, "
        f"public-share statistics {v.get('pretrained_public_minus_scratch_points', float('nan')):+.1f}"
        for key, v in cells.items())
    text = (f"Reading (points, pretrained minus the better scratch row): {lines}. With `bn-statistics = public` "
            f"pretrained reaches scratch for {', '.join(met) or 'no pair'}")
    if missed:
        text += (f" and not for {', '.join(missed)}: there a backbone from another domain should not be used "
                 "(README, \"A backbone from another domain\")")
    return text + ". One run per row: differences of 2-3 points are within run-to-run noise."


READINGS = {
    "privacy-utility": _reading_privacy_utility,
    "heterogeneity": _reading_heterogeneity,
    "transfer": _reading_transfer,
}


def reading(result: dict[str, Any]) -> str:
    """What the table says, computed from it (so it stays true when the numbers are re-run)."""
    if result["experiment"] == "audit":
        return f"\n{audit_reading(result)}\n"
    if result["experiment"] == "patient-privacy":
        return f"\n{_reading_patient_privacy(result)}\n"
    if result["experiment"] == "stain-strategy":
        return f"\n{_reading_stain_strategy(result)}\n"
    if result["experiment"] == "cross-domain":
        return f"\n{_reading_cross_domain(result)}\n"
    rows = [r for r in result["rows"] if r.get("kind") == "federated" and r.get("accuracy") is not None]
    reading = READINGS.get(result["experiment"])
    text = reading(rows) if reading and rows else ""
    return f"\n{text}\n" if text else ""
