"""The audit experiment's section: its setup paragraph and what its rows show (or cannot)."""

from __future__ import annotations

from typing import Any

from simulations.harness.results import row_ceiling


def audit_setup(result: dict[str, Any]) -> str:
    plan = result["plan"]
    seeds = sorted({r["seed"] for r in result["rows"]})
    first = result["rows"][0]
    score = result.get("canary_score", "update")
    kind = plan.get("canary_kind", "mislabelled")
    canaries = {"noise": "images of uniform noise, each with a random label; `common.audit.canaries`",
                "blocks": "images of coarse random colour blocks, each with a random label; `common.audit.canaries`",
                "gradient": "gradient-space Dirac canaries, `simulations.harness.gradient_canaries`: each owns one trainable "
                            "coordinate j (the m where site 0's own records, then records no site holds, push least: "
                            "Σ |per-record gradient| at the starting model) and, when Poisson-sampled into a step at "
                            "the real records' rate q, its per-record gradient G·e_j joins the real records' "
                            "per-record gradients *before* clipping, as a record (at the patient unit a patient) of "
                            f"its own (`TrainSettings.extra_records`): G = {plan.get('canary_norm', 1):g}·C under DP, "
                            "so that the site's clipping must cut it to C·e_j and clipping that does not clip shows; "
                            "G = C without DP, where nothing clips"}.get(
        kind, "patches of groups no site holds, each with a random wrong label; `common.audit.canaries`")
    canary_score = ("the canary's own coordinate, −Σ_rounds (θ_returned − θ_sent)[j] (the coordinator's view)"
                    if kind == "gradient" else f"the *{score}* score (chosen from pilot runs on another seed)")
    return (
        f"Setup: {plan['sites']} IID sites (at most {plan['per_group']} patches per group, site 0 audited: "
        f"{first['site_records']} real patches), {plan['rounds']} rounds x {plan['local_epochs']} local epochs, "
        f"{result['image_size']} px{_audit_size_note(result)}, policy `{result['policy']}`, δ = {plan['delta']:g} per site, "
        f"DP unit of privacy: {audit_units(result)}, audit seeds "
        f"{', '.join(map(str, seeds))}. FedAvg runs in process through the sites' own training function "
        "(`common.training.local.train_local`, Opacus DP-SGD with noise from `calibrate_noise` for all planned rounds and a "
        f"fresh secret seed per site and round). {plan['canaries']} canaries ({canaries}) each "
        f"join site 0's training data with probability ½.{_broken_note(result)} MIA: site 0's real "
        "training patches vs class-matched patches of held-out groups (the central test set); 95% CIs resample "
        "whole groups. Scores (higher = member): *gradient* = how far each round's update moved the model along the "
        "record's own descent direction at the model the site was sent, ⟨θ_returned − θ_sent, −∇ℓ⟩ / ‖∇ℓ‖ over the "
        "non-convolution trainable tensors, summed over rounds (the coordinator's white-box view; "
        "`common.audit.canaries.update_alignment`); *update* = the loss drop each round between the global model "
        "the site received and the model it sent back, summed over rounds; "
        "*final global* = minus the loss under the final global model (what anyone with the model sees); "
        "*last update* = minus the loss under the site's last returned model. The canary bound (Steinke, Nasr & "
        f"Jagielski, NeurIPS 2023; `common.audit.bound`) scores each canary by {canary_score}, guesses the "
        "top/bottom k canaries "
        "for k in 5/10/20/40/100% of m with a Bonferroni correction, 95% confidence, at the run's δ. TPR at 0.1% "
        "FPR rests on fewer than 1,000 non-members, i.e. it is the TPR at zero false positives. Audit cost / run = "
        "(training + evaluation + audit scoring) / (the same run without canaries, their share of site 0's "
        "training time removed).\n"
    )


def _broken_note(result: dict[str, Any]) -> str:
    broken = [r for r in result["rows"] if r.get("fault")]
    if not broken:
        return ""
    return (" Rows marked *(broken)* run DP with the implementation broken on purpose while every site's ledger claims "
            "the calibrated mechanism, so each site reports the row's ε (`simulations.harness.audit_sites`): *noise "
            "off* adds no noise (σ_actual = 0, the ledger records the calibrated σ); *clipping off* clips at 10^6·C "
            "(the ledger records C; the noise keeps its σ·C). The audit must find them inconsistent. The ceiling is "
            "the bound every guess right would give (from m, δ and the coin flips alone): a claim at or above it "
            "cannot be contradicted by this audit (verdict *inconclusive*).")


def audit_units(result: dict[str, Any]) -> str:
    units = sorted({r.get("privacy_unit") or "patch" for r in result["rows"] if r["dp"]})
    text = ", ".join(units) or "n/a"
    if "patient" in units:
        text += " (each LC25000 near-duplicate group is a patient; each canary is a patient of its own)"
    return text


def _audit_size_note(result: dict[str, Any]) -> str:
    if result["quick"] and result["image_size"] < 32:
        return (" (shrunk from the other experiments' 32 px to fit a shared, busy 2-core machine; the 32 px "
                "public-share backbone sees 16 px patches)")
    return ""


def audit_reading(result: dict[str, Any]) -> str:
    rows, t = result["rows"], result["targets"]
    nonprivate = [r for r in rows if not r["dp"]]
    dp = [r for r in rows if r["dp"] and not r.get("fault")]
    text = "Reading: an ε lower bound is what an attacker has *proven* to learn; it can only be checked against the claim. "
    if dp:
        worst = max(dp, key=lambda r: r["canary"]["epsilon_lower_bound"] / r["claimed_epsilon"])
        text += (f"In every DP row as implemented the bound stays below the claimed ε (largest: "
                 f"{worst['canary']['epsilon_lower_bound']:.2f} at claimed ε = {worst['claimed_epsilon']:g}), so no "
                 "implementation error shows"
                 + (". " if t["nonprivate_has_power"] in (True, None) else
                    ", but see the next sentence: an audit without power would show none either. ")
                 if t["bound_below_claimed_epsilon"] else
                 "**A DP row's bound exceeds its claimed ε: the implementation or its accounting is broken.** ")
        text += _ceiling_note(t)
    text += _broken_reading(result)
    if nonprivate:
        aucs = [r["mia"]["update"]["auc"] for r in nonprivate]
        bounds = [r["canary"]["epsilon_lower_bound"] for r in nonprivate]
        text += (f"Without DP the same attacks reach MIA AUC {min(aucs):.2f}-{max(aucs):.2f} and canary bounds "
                 f"{min(bounds):.2f}-{max(bounds):.2f}: the audit "
                 + ("has the power to notice leakage." + _audit_power_note(result) if t["nonprivate_has_power"] else
                    "**has no power at this size**: the non-private model does not memorise its canaries or "
                    "overfit its records within this training budget, so the DP rows' zero bounds and chance AUCs "
                    "prove little beyond the absence of gross leaks. The pilots below (another seed) looked for power "
                    "within this machine's budget and found none: input-space canaries (noise, colour blocks, "
                    "mislabelled patches) are not memorised individually by a `norm-head` model, and full fine-tuning "
                    "of ResNet-18 at 16 px neither (canary AUC ≤ 0.67) while costing 2-3x more under DP. Power needs "
                    "much longer training of a model that can memorise (a GPU), or gradient-space canaries "
                    "inserted into DP-SGD itself.")
                 + " ")
    if dp and t["dp_max_auc"] is not None:
        text += (f"Under DP (ε ≤ 8) the strongest MIA score reaches AUC {t['dp_max_auc']:.3f}"
                 + (" (≤ 0.55)." if t["dp_auc_at_most_0_55"] else ", above the 0.55 target.")
                 + (" DP here protects whole patients (LC25000's near-duplicate groups), the unit the MIA splits "
                    "members from non-members by, so the MIA is measured at the unit the ε covers."
                    if "patient" in audit_units(result) else
                    " The unit of privacy is one patch, while LC25000 patches come in near-duplicate groups that the "
                    "MIA splits by: a member's group-mates are members too, so this MIA measures group-level leakage, "
                    "which patch-level ε bounds only through group privacy."))
    return text


def _ceiling_note(t: dict[str, Any]) -> str:
    """Which claims the audit could have contradicted at all (claim below its ceiling)."""
    could, could_not = t.get("conclusive_claims") or [], t.get("inconclusive_claims") or []
    if not could and not could_not:
        return ""
    text = ""
    if could:
        text += f"At ε = {', '.join(f'{c:g}' for c in could)} that means something: the audit could have exceeded the claim. "
    if could_not:
        text += (f"At ε = {', '.join(f'{c:g}' for c in could_not)} it means nothing: one run with these canaries "
                 "cannot prove that much even with every guess right (the ceiling), so a broken implementation would "
                 "pass too. ")
    return text


def _broken_reading(result: dict[str, Any]) -> str:
    """What the rows broken on purpose show."""
    broken = [r for r in result["rows"] if r.get("fault")]
    if not broken:
        return ""
    parts = [f"{r['fault'].replace('-', ' ')} at claimed ε = {r['claimed_epsilon']:g}: bound "
             f"{r['canary']['epsilon_lower_bound']:.2f} ({r['canary']['correct']}/{r['canary']['guesses']} right)"
             for r in broken]
    caught = result["targets"].get("broken_runs_caught")
    return ("The implementations broken on purpose, " + "; ".join(parts) + ("; the audit finds each inconsistent "
            "with its claim, so it can fail: a DP-SGD that forgets its noise or its clipping does not pass unseen. "
            if caught else "; **the audit does not catch every one of them**: at this size it cannot tell such a "
            "bug from a correct implementation. "))


def _audit_power_note(result: dict[str, Any]) -> str:
    """Where the power comes from, and the bound's ceiling at this m and δ."""
    plan = result["plan"]
    if plan.get("canary_kind") != "gradient":
        return ""
    nonprivate = [r for r in result["rows"] if not r["dp"]]
    found = ", ".join(f"{r['canary']['correct']}/{r['canary']['guesses']}" for r in nonprivate)
    caps = sorted({round(row_ceiling(r), 2) for r in nonprivate})
    return (" The power comes from the gradient canaries: records whose gradient is G·e_j at every step are "
            "the worst case a DP-SGD proof must cover, and without DP the coordinator's guesses are right for "
            f"{found} of them (with m = {plan['canaries']} at δ = {plan['delta']:g} and these coin flips even every "
            f"guess right proves at most ε ≥ {', '.join(f'{c:.2f}' for c in caps)}, the ceiling: one run cannot show "
            "more). The real-record MIA stays near chance: at this size the model does not memorise real patches, "
            "which are far from the worst case.")
