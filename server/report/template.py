"""The Jinja2 template of report.html, kept as a Python string on purpose.

Flower packages the app into a FAB that carries only *.py, *.toml, *.md, *.json and *.yaml
files, so a separate .html/.j2 template would be missing when the ServerApp writes the report
inside Flower. The page is self-contained: inline CSS, figures as data URIs, no script, no
external URL. Every section has a stable id (tests and links rely on them).
"""

from __future__ import annotations

CSS = """
:root { --ink:#1f2430; --muted:#5d6472; --line:#e3e5ea; --bg:#f5f4f8; --card:#fff; --purple:#5b2a86;
  --purple-soft:#efe8f6; --pink:#c2407a; --teal:#2a8c82; --amber:#b86e00; --amber-soft:#fff4e0;
  --red:#b3261e; --red-soft:#fdecea; --green:#1e7a46; }
* { box-sizing: border-box; }
html { background: var(--bg); }
body { margin: 0; color: var(--ink); font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  "Noto Sans", "DejaVu Sans", sans-serif; }
.masthead { background: linear-gradient(120deg, #3d1a5e 0%, #5b2a86 55%, #c2407a 100%); color: #fff;
  padding: 28px 0 64px; }
.wrap { max-width: 1120px; margin: 0 auto; padding: 0 28px; }
.eyebrow { text-transform: uppercase; letter-spacing: .12em; font-size: 12px; opacity: .85; margin: 0 0 6px; }
h1 { margin: 0; font-size: 28px; font-weight: 650; letter-spacing: -.01em; }
.masthead .sub { margin: 8px 0 0; opacity: .92; font-size: 14.5px; }
main.wrap { margin-top: -40px; padding-bottom: 48px; }
section, .alert { background: var(--card); border-radius: 12px; box-shadow: 0 1px 3px rgba(31,36,48,.08),
  0 6px 20px rgba(31,36,48,.05); padding: 22px 26px; margin: 0 0 20px; }
h2 { margin: 0 0 4px; font-size: 19px; font-weight: 650; }
h2 + .lead { margin-top: 0; }
h3 { font-size: 15px; margin: 20px 0 8px; }
.lead { color: var(--muted); margin: 0 0 14px; font-size: 14px; }
.alert { border-left: 6px solid; display: flex; gap: 14px; align-items: flex-start; }
.alert .icon { font-size: 22px; line-height: 1; font-weight: 700; }
.alert p { margin: 4px 0 0; }
.alert-warn { border-color: var(--amber); background: var(--amber-soft); }
.alert-warn .icon { color: var(--amber); }
.alert-danger { border-color: var(--red); background: var(--red-soft); }
.alert-danger .icon { color: var(--red); }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 14px; margin: 6px 0 18px; }
.kpi { border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.kpi.main { background: var(--purple-soft); border-color: #d9c9ea; }
.kpi .label { color: var(--muted); font-size: 12.5px; text-transform: uppercase; letter-spacing: .06em; }
.kpi .value { font-size: 28px; font-weight: 700; color: var(--purple); line-height: 1.2; }
.kpi .ci { color: var(--muted); font-size: 12.5px; }
.facts { display: grid; grid-template-columns: 170px 1fr; gap: 6px 16px; margin: 0; }
.facts dt { color: var(--muted); font-size: 13.5px; }
.facts dd { margin: 0; }
.pill { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12.5px; font-weight: 600;
  background: #eef0f3; color: var(--ink); margin: 1px 2px 1px 0; }
.pill.warn { background: var(--amber-soft); color: var(--amber); }
.pill.bad { background: var(--red-soft); color: var(--red); }
.pill.ok { background: #e6f4ec; color: var(--green); }
.statements { margin: 6px 0 0; padding: 0; list-style: none; }
.statements li { padding: 8px 12px; border-left: 3px solid var(--purple); background: #faf8fc; margin: 6px 0;
  font-size: 14px; border-radius: 0 6px 6px 0; }
nav.toc { display: flex; flex-wrap: wrap; gap: 6px 8px; margin: 0 0 20px; }
nav.toc a { background: var(--card); border: 1px solid var(--line); border-radius: 999px; padding: 3px 12px;
  font-size: 13px; color: var(--purple); text-decoration: none; }
figure { margin: 8px 0 4px; text-align: center; }
figure img { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; text-align: left; }
.two { display: grid; grid-template-columns: 1.1fr 1fr; gap: 24px; align-items: start; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-size: 12.5px; color: var(--muted); font-weight: 600; background: #fafafc; }
td.nowrap, th.nowrap { white-space: nowrap; }
td.num, th.num { text-align: right; }
tr.highlight td { background: var(--purple-soft); font-weight: 600; }
td.weak { color: var(--red); font-weight: 600; }
.scroll { overflow-x: auto; }
.bar { position: relative; height: 10px; background: #eceaf1; border-radius: 5px; min-width: 120px;
  margin: 4px 0 2px; overflow: hidden; }
.bar > span { position: absolute; left: 0; top: 0; bottom: 0; background: linear-gradient(90deg, #7b4fa8, #5b2a86);
  border-radius: 5px; }
.bar.over > span { background: var(--red); }
.small { font-size: 12.5px; color: var(--muted); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
  font-size: 12.5px; }
.config { columns: 2; column-gap: 32px; }
.config div { break-inside: avoid; display: flex; justify-content: space-between; gap: 12px;
  border-bottom: 1px dotted var(--line); padding: 3px 0; }
.config .k { color: var(--muted); }
.config .v { text-align: right; word-break: break-all; }
details summary { cursor: pointer; color: var(--purple); font-weight: 600; font-size: 14px; margin: 10px 0 6px; }
.empty { color: var(--muted); font-style: italic; }
.howto dt { font-weight: 650; margin-top: 10px; }
.howto dd { margin: 2px 0 0 0; color: #333a48; }
footer { color: var(--muted); font-size: 12.5px; text-align: center; padding: 8px 0 32px; }
@media (max-width: 820px) { .kpis { grid-template-columns: repeat(2, 1fr); } .two { grid-template-columns: 1fr; }
  .config { columns: 1; } .facts { grid-template-columns: 1fr; } }
@media print { html, body { background: #fff; } .masthead { padding: 16px 0; } main.wrap { margin-top: 12px; }
  section, .alert { box-shadow: none; border: 1px solid var(--line); break-inside: avoid; } nav.toc { display: none; } }
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<header class="masthead">
  <div class="wrap">
    <p class="eyebrow">fedpath &middot; federated learning report</p>
    <h1>{{ title }}</h1>
    <p class="sub">{{ task }} &middot; {{ sites_count }} site{{ '' if sites_count == 1 else 's' }} &middot;
      rounds {{ rounds_text }} &middot; {{ 'differentially private' if dp else 'NOT differentially private' }}
      {% if dp %}&middot; <span id="privacy-unit">{{ unit_line }}</span>{% endif %}
      &middot; {{ 'complete' if complete else 'INCOMPLETE' }}</p>
  </div>
</header>
<main class="wrap">
{% if not complete %}
<div class="alert alert-danger" id="incomplete-warning" role="alert">
  <div class="icon">!</div>
  <div><strong>{{ 'No site trained.' if no_site_trained else 'Incomplete run.' }}</strong> {{ incomplete_reason }}
    <p id="next-step">{{ next_step }}</p></div>
</div>
{% endif %}
{% if not weights.pretrained %}
<div class="alert alert-warn" id="weights-warning" role="alert">
  <div class="icon">!</div>
  <div><strong>No pretrained weights: this model was trained from scratch.</strong>
    Weights source: <code>{{ weights.source }}</code>{% if weights.description %} ({{ weights.description }}){% endif %}.
    This is not a transfer-learning result; with ImageNet (or other pretrained) weights the same federation
    would usually reach higher accuracy in fewer rounds.</div>
</div>
{% endif %}
{% if over_budget %}
<div class="alert alert-danger" id="budget-warning" role="alert">
  <div class="icon">!</div>
  <div><strong>Privacy budget exceeded</strong> at {{ over_budget | join(', ') }}. See the sites table below.</div>
</div>
{% endif %}

<section id="summary">
  <h2>Summary</h2>
  <p class="lead">Central test set: {{ headline['from'] }}.</p>
  <div class="kpis">
  {% for item in headline['items'] %}
    <div class="kpi{{ ' main' if loop.first else '' }}">
      <div class="label">{{ item.label }}</div>
      <div class="value">{{ item.value }}</div>
      <div class="ci">{{ item.ci or '&nbsp;'|safe }}</div>
    </div>
  {% endfor %}
  </div>
  {% if patients %}
  <p class="lead" id="patient-headline">Per patient: {{ patients.patients }} patients of the test set
    ({{ patients.aggregation }}); CIs resample patients.</p>
  <div class="kpis">
  {% for item in patients['items'] %}
    <div class="kpi">
      <div class="label">{{ item.label }} (patients)</div>
      <div class="value">{{ item.value }}</div>
      <div class="ci">{{ item.ci or '&nbsp;'|safe }}</div>
    </div>
  {% endfor %}
  </div>
  {% endif %}
  <dl class="facts">
    <dt>Task</dt><dd>{{ task }}: {% for c in classes %}<span class="pill">{{ c }}</span>{% endfor %}</dd>
    <dt>Data</dt><dd>{{ dataset }}; central test set of {{ run.test_examples if run.test_examples is not none else 'n/a' }}
      images (majority class {{ chance }}: a model that always guesses it gets this accuracy)
      {#- issue 25: one line per test-set class with no training image #}
      {% for c in run.classes_without_training_images %}<div class="untrained-class"><strong>class {{ c }}: no training images</strong> in the run's dataset outside the central test set (in a simulation: at no site)</div>{% endfor %}</dd>
    <dt>Sites</dt><dd>{{ sites_count }} ({{ site_names }})</dd>
    <dt>Rounds</dt><dd>{{ rounds_text }}{% if resumed %}; resumed {{ resumed | length }} time(s){% endif %}</dd>
    <dt>Model</dt><dd>{{ model_text }}</dd>
    <dt>Strategy</dt><dd>{{ strategy_text }} (Flower's), over the updates that pass screening</dd>
    <dt>Stain handling</dt><dd>{{ stain_text }}</dd>
    <dt>Starting weights</dt><dd>{% if weights.pretrained %}<span class="pill ok">pretrained</span>{% else %}<span
      class="pill warn">not pretrained</span>{% endif %} {{ weights.description or weights.source }}</dd>
    <dt>BatchNorm statistics</dt><dd>{{ run.bn_statistics or "the backbone's own" }}</dd>
    <dt>Head</dt><dd>{{ run.head_centering }}</dd>
    <dt>Privacy</dt><dd>{{ privacy_text }}</dd>
    <dt>Status</dt><dd>{% if complete %}<span class="pill ok">complete</span>{% else %}<span
      class="pill bad">incomplete</span>{% endif %} started {{ start }}, ended {{ end }} ({{ duration }})</dd>
  </dl>
  <h3>Privacy guarantee, per site</h3>
  {% if dp %}<p class="lead" id="privacy-explainer">{{ explainer }}</p>{% endif %}
  {% if statements %}
  <ul class="statements">{% for s in statements %}<li>{{ s }}</li>{% endfor %}</ul>
  {% else %}<p class="empty">No site replied in this run.</p>{% endif %}
</section>

<nav class="toc" aria-label="Sections">{% for id, name in sections %}<a href="#{{ id }}">{{ name }}</a>{% endfor %}</nav>

<section id="learning-curves">
  <h2>Learning curves</h2>
  <p class="lead">The global model on the central test set after every round. Round 0 is the starting model,
    before any site trained.</p>
  {% if plots.learning_curves %}
  <figure><img src="{{ plots.learning_curves }}" alt="Test metrics and loss per round"></figure>
  {% else %}<p class="empty">No round was evaluated.</p>{% endif %}
  <p id="round-acceptance">{{ acceptance }}</p>
  {% if round_rows %}
  <details><summary>Numbers per round</summary>
  <div class="scroll"><table>
    <thead><tr><th>Round</th><th class="num">Accuracy</th><th class="num">Balanced acc.</th><th class="num">Macro-F1</th>
      <th class="num">Macro AUC</th><th class="num">Loss</th><th class="num">Updates used</th><th class="num">Max site ε</th>
      <th class="num">Validation acc.</th><th>Kept</th><th>Why</th></tr></thead>
    <tbody>{% for r in round_rows %}<tr><td>{{ r.round }}</td><td class="num">{{ r.accuracy }}</td>
      <td class="num">{{ r.balanced_accuracy }}</td><td class="num">{{ r.macro_f1 }}</td><td class="num">{{ r.macro_auc }}</td>
      <td class="num">{{ r.loss }}</td><td class="num">{{ r.updates }}</td><td class="num">{{ r.max_epsilon }}</td>
      <td class="num">{{ r.validation }}</td><td>{% if r.not_kept %}<span class="pill warn">{{ r.kept }}</span>{% else %}{{ r.kept }}{% endif %}</td>
      <td class="small">{{ r.why }}</td></tr>{% endfor %}</tbody>
  </table></div>
  </details>
  {% endif %}
</section>

<div class="two">
<section id="confusion-matrix">
  <h2>Confusion matrix</h2>
  <p class="lead">Rows: the true class; columns: what the model said. The diagonal is correct; read each row
    as "of the images that really are X, how many were called Y".</p>
  {% if plots.confusion_matrix %}
  <figure><img src="{{ plots.confusion_matrix }}" alt="Confusion matrix of the final model"></figure>
  {% else %}<p class="empty">Not available: the run has no final evaluation.</p>{% endif %}
</section>

<section id="reliability">
  <h2>Calibration</h2>
  <p class="lead">Does a confidence of 80% mean right 80% of the time? Bars on the diagonal are perfectly
    calibrated; ECE (expected calibration error) is the average gap{% if final %}: {{ ece }}{% endif %}.</p>
  {% if plots.reliability %}
  <figure><img src="{{ plots.reliability }}" alt="Reliability diagram of the final model"></figure>
  {% else %}<p class="empty">Not available: the run has no final evaluation.</p>{% endif %}
</section>
</div>

<section id="per-class">
  <h2>Per class</h2>
  <p class="lead">Recall (sensitivity): of the images of this class, the share found. Precision: of the images
    called this class, the share that really are. F1 combines both. Recall below 50% is marked.</p>
  {% if per_class_rows %}
  <div class="scroll"><table>
    <thead><tr><th>Class</th><th class="num">Test images</th><th class="num">Precision</th><th class="num">Recall</th>
      <th class="num">F1</th><th class="num">Training images (all sites)</th></tr></thead>
    <tbody>{% for r in per_class_rows %}<tr><td>{{ r.name }}</td><td class="num">{{ r.support }}</td>
      <td class="num">{{ r.precision }}</td><td class="num{{ ' weak' if r.weak else '' }}">{{ r.recall }}</td>
      <td class="num">{{ r.f1 }}</td><td class="num">{{ r.train }}</td></tr>{% endfor %}</tbody>
  </table></div>
  {% else %}<p class="empty">Not available: the run has no final evaluation.</p>{% endif %}
</section>

{% if patients %}
<section id="patients">
  <h2>Per patient</h2>
  <p class="lead">Each patient's patches together: the {{ patients.aggregation }} gives its scores (accuracy and
    AUC below, CIs by a {{ patients.ci_method }}); the share of its patches predicted as each class is what a slide
    review counts (deciding by that majority: accuracy {{ patients.majority_vote }}). {{ patients.patients }} patients,
    {{ patients.patches }} patches{% if patients.mixed %}; {{ patients.mixed }} patients whose patches carry more
    than one label are left out{% endif %}. Wrongly classified patients are listed first.</p>
  <details><summary>Every patient (class order: {{ classes | join(' / ') }})</summary>
  <div class="scroll"><table>
    <thead><tr><th>Patient</th><th>Label</th><th>Predicted</th><th class="num">Patches</th>
      <th class="num">Mean probability</th><th class="num">Share of patches</th></tr></thead>
    <tbody>{% for p in patients.rows %}<tr><td class="mono">{{ p.patient }}</td><td>{{ p.label }}</td>
      <td class="{{ 'weak' if p.wrong else '' }}">{{ p.predicted }}</td><td class="num">{{ p.patches }}</td>
      <td class="num mono">{{ p.mean }}</td><td class="num mono">{{ p.share }}</td></tr>{% endfor %}</tbody>
  </table></div>
  </details>
</section>
{% endif %}

<section id="sites">
  <h2>Sites and privacy</h2>
  <p class="lead">Each hospital trained on its own images, which never left it. Two ε per site: that of the updates
    it sent in this job (the composition of this run's rounds, from the σ, q and steps it reported), and its
    cumulative ε over every round it ever trained (from its own ledger), against its own lifetime budget; smaller
    is more private.</p>
  {% if site_rows %}
  <div class="scroll"><table>
    <thead><tr><th>Site</th><th>Rounds trained</th><th>Without update</th><th class="num">Training images</th>
      <th>Per-class images</th><th class="num">Local val. acc.</th><th class="num">ε granted to this job</th>
      <th class="num">ε of this job's updates</th><th style="min-width:170px">Cumulative ε / lifetime budget</th>
      <th class="num">δ</th><th class="num">Noise σ</th><th class="num">Clip C</th>
      <th class="num" title="{{ noise_per_clip }}">Noise per step σ/(q·N)</th><th class="num">Sent / received</th></tr></thead>
    <tbody>{% for s in site_rows %}<tr>
      <td class="nowrap"><strong>{{ s.site_id }}</strong></td><td>{{ s.trained }}</td>
      <td>{% if s.has_missing %}<span class="pill bad">{{ s.missing }}</span>{% else %}-{% endif %}</td>
      <td class="num">{{ s.examples }}</td><td class="mono">{{ s.class_counts }}</td>
      <td class="num">{{ s.val_accuracy }}{% if s.val_examples %}<div class="small">of {{ s.val_examples }}</div>{% endif %}</td>
      <td class="num">{{ s.granted if s.dp else '-' }}</td><td class="num">{{ s.epsilon_job if s.dp else '-' }}</td>
      <td>{% if s.dp %}<strong>{{ s.epsilon }}</strong> / {{ s.budget }}
        <div class="bar{{ ' over' if s.over_budget else '' }}" role="img" aria-label="{{ s.fraction_text }}"><span style="width: {{ s.bar_width }}%"></span></div>
        <div class="small">{{ s.fraction_text }}</div>{% else %}<span class="pill warn">no DP</span>{% endif %}</td>
      <td class="num">{{ s.delta }}</td><td class="num">{{ s.sigma }}</td><td class="num">{{ s.clip }}</td>
      <td class="num">{{ s.noise_per_clip if s.dp else '-' }}</td>
      <td class="num">{{ s.traffic }}</td></tr>{% endfor %}</tbody>
  </table></div>
  {% if dp %}<p class="small" id="noise-per-clip">Noise per step: {{ noise_per_clip }}.</p>{% endif %}
  {% if plots.privacy %}
  <figure><img src="{{ plots.privacy }}" alt="Cumulative epsilon per site per round" style="max-width:640px"></figure>
  {% endif %}
  {% else %}<p class="empty">No site replied in this run.</p>{% endif %}
</section>

{% if audit %}
<section id="privacy-audit">
  <h2>Privacy audit</h2>
  <p class="lead">Simulation only: site-0 trained with {{ audit.canaries }} made-up canary images, each included
    with probability &frac12;. From the models it sent and got back, the server guessed which canaries were
    included; the number of right guesses gives an empirical <em>lower</em> bound on ε (95% confidence; Steinke,
    Nasr &amp; Jagielski 2023), shown next to the ε the site claims and the largest ε this audit could prove at all
    (every guess right): a claim at or above that ceiling cannot be contradicted, so the audit is inconclusive.</p>
  {% if audit.broken %}<div class="alert alert-danger" id="audit-warning" role="alert"><div class="icon">!</div>
    <div><strong>The empirical lower bound exceeds the claimed ε at {{ audit.broken | join(', ') }}:</strong> the
    privacy implementation is broken; do not rely on this run's privacy claim.</div></div>{% endif %}
  <div class="scroll"><table>
    <thead><tr><th>Site</th><th class="num">Claimed ε</th><th class="num">Empirical lower bound on ε</th>
      <th class="num">Ceiling (all guesses right)</th><th>Verdict</th><th>Guesses</th><th class="num">Membership AUC on canaries (95% CI)</th><th>Canaries</th><th class="num">δ</th>
      <th>Rounds scored</th></tr></thead>
    <tbody>{% for r in audit.rows %}<tr><td class="nowrap"><strong>{{ r.site_id }}</strong></td>
      <td class="num">{{ r.claimed }}</td>
      <td class="num">{% if r.consistent %}{{ r.bound }}{% else %}<span class="pill bad">{{ r.bound }}</span>{% endif %}</td>
      <td class="num">{{ r.ceiling }}</td><td>{{ r.verdict }}</td>
      <td>{{ r.guesses }}</td><td class="num">{{ r.auc }}</td><td>{{ r.canaries }}</td><td class="num">{{ r.delta }}</td>
      <td>{{ r.rounds }}</td></tr>{% endfor %}</tbody>
  </table></div>
  <p id="audit-reading">{{ audit.reading }}</p>
</section>
{% endif %}

<section id="rounds-without-update">
  <h2>Rounds without update</h2>
  <p class="lead"><strong>Refused</strong>: the site declined (for instance, the round would have exceeded its
    privacy budget). <strong>Failed</strong>: the site crashed or did not answer. <strong>Rejected</strong>: the server
    screened the update out (malformed or implausibly large); the site's privacy was still spent.</p>
  {% if missing_rounds %}
  <div class="scroll"><table>
    <thead><tr><th class="num">Round</th><th>Site</th><th>Status</th><th>Reason</th></tr></thead>
    <tbody>{% for m in missing_rounds %}<tr><td class="num">{{ m.round }}</td><td>{{ m.site_id }}</td>
      <td><span class="pill {{ 'warn' if m.status == 'refused' else 'bad' }}">{{ m.status }}</span></td>
      <td>{{ m.reason }}</td></tr>{% endfor %}</tbody>
  </table></div>
  {% else %}<p class="empty">None: every site that was asked sent an accepted update in every round.</p>{% endif %}
</section>

<section id="baselines">
  <h2>Baselines</h2>
  <p class="lead">The federated result beside what the same task reaches otherwise: pooling all data without
    privacy (an upper reference that federation exists to avoid), or each site training alone.</p>
  {% if baseline_rows %}
  {% if plots.baselines %}<figure><img src="{{ plots.baselines }}" alt="Accuracy of the federated model and the baselines" style="max-width:760px"></figure>{% endif %}
  <div class="scroll"><table>
    <thead><tr><th>Setting</th><th>Kind</th><th class="num">Accuracy</th><th class="num nowrap">95% CI</th><th class="num">vs this run (points)</th>
      <th class="num">Balanced acc.</th><th class="num">Macro-F1</th><th class="num">Macro AUC</th><th class="num">ECE</th>
      <th class="num">Max site ε</th><th class="num">Test images</th></tr></thead>
    <tbody>{% for b in baseline_rows %}<tr class="{{ 'highlight' if b.highlight else '' }}"><td>{{ b.name }}
      {% if b.notes %}<div class="small">{{ b.notes }}</div>{% endif %}{% if not b.highlight %}<div class="small mono">{{ b.source }}</div>{% endif %}</td>
      <td>{{ b.kind }}</td><td class="num"><strong>{{ b.accuracy_text }}</strong></td><td class="num nowrap">{{ b.ci_text }}</td><td class="num">{{ b.delta_text }}</td>
      <td class="num">{{ b.balanced_text }}</td><td class="num">{{ b.f1_text }}</td><td class="num">{{ b.auc_text }}</td>
      <td class="num">{{ b.ece_text }}</td><td class="num">{{ b.epsilon_text }}</td><td class="num">{{ b.test_text }}</td></tr>{% endfor %}</tbody>
  </table></div>
  <p class="small">Differences are only meaningful on the same test set: compare the "test images" column.</p>
  {% else %}<p class="empty">No baseline was given. Add some with
    <code>python -m server.report {{ run.run_dir }} --baseline pooled=pooled.json --baseline local=local-only.json</code>
    (docs/REPORT.md).</p>{% endif %}
</section>

<section id="communication">
  <h2>Communication</h2>
  <p class="lead">Bytes the server sent to / received from each site per round (model tensors with their
    framing). No image, label or per-image value is ever sent. Total: {{ communication.total_down }} sent,
    {{ communication.total_up }} received.</p>
  {% if communication.rows %}
  <div class="scroll"><table>
    <thead><tr><th>Site</th>{% for r in communication.rounds %}<th class="num">Round {{ r }}</th>{% endfor %}<th class="num">Total</th></tr></thead>
    <tbody>{% for row in communication.rows %}<tr><td>{{ row.site_id }}</td>{% for c in row.cells %}<td class="num">{{ c }}</td>{% endfor %}
      <td class="num"><strong>{{ row.total }}</strong></td></tr>{% endfor %}</tbody>
  </table></div>
  {% else %}<p class="empty">Nothing was exchanged.</p>{% endif %}
</section>

<section id="configuration">
  <h2>Configuration</h2>
  <p class="lead">Everything needed to reproduce or audit this run.</p>
  <dl class="facts">
    <dt>Run id</dt><dd class="mono">{{ run.run_id }}</dd>
    <dt>Run directory</dt><dd class="mono">{{ run.run_dir }}</dd>
    <dt>Started / ended</dt><dd>{{ start }} / {{ end }} ({{ duration }})</dd>
    {% for r in resumed %}<dt>Resumed</dt><dd>after round {{ r.after_round }} at {{ r.time }} (Flower run {{ r.run_id }})</dd>{% endfor %}
    <dt>Weights</dt><dd>{{ weights.headline }}; {{ weights.description }}{% if weights.path %}<div class="mono">{{ weights.path }}</div>{% endif %}</dd>
    <dt>Weights SHA-256</dt><dd class="mono">{{ weights.sha256 or 'none (no weights file)' }}</dd>
    <dt>Versions</dt><dd>{% for name, v in versions %}<span class="pill">{{ name }} {{ v }}</span>{% endfor %}</dd>
    <dt>Confidence intervals</dt><dd>{{ ci_method or 'none (no final evaluation)' }}</dd>
  </dl>
  <h3>Privacy settings: asked by the job, applied by the sites</h3>
  <p class="lead">What the sites reported they applied, from their replies: a deployed site takes its privacy
    settings from its own node config, whatever the job asks.</p>
  <div class="scroll"><table id="privacy-settings">
    <thead><tr><th>Key</th><th>The job asked</th><th>Verdict</th><th>Per site</th></tr></thead>
    <tbody>{% for row in privacy_settings %}<tr><td class="mono">{{ row.key }}</td><td class="mono">{{ row.asked }}</td>
      <td><span class="pill {{ 'bad' if row.verdict == 'overridden' else 'warn' if row.verdict in ('not-reported', 'no-reply') else 'ok' }}">{{ row.verdict }}</span></td>
      <td class="small">{% for site in row.sites %}{{ site.site_id }}: {{ site.applied if site.applied is not none else 'none reported' }}{{ '; ' if not loop.last else '' }}{% endfor %}</td></tr>{% endfor %}</tbody>
  </table></div>
  <h3>Run configuration (to reproduce or audit this run)</h3>
  <div class="config">{% for key, value, verdict, verdict_text in config_items %}<div><span class="k mono">{{ key }}</span><span class="v mono">{{ value }}</span>{% if verdict %}<span class="pill {{ 'bad' if verdict == 'overridden' else 'warn' if verdict in ('not-reported', 'no-reply') else 'ok' }}" title="{{ verdict_text }}">{{ verdict }}</span>{% endif %}</div>{% endfor %}</div>
</section>

<section id="what-sites-sent">
  <h2>What each site sent</h2>
  <p class="lead">Every value a site may send, from the reply schema the sites and this server share
    (common/wire/reply.py); nothing else is accepted. Opt-in diagnostics sent by: {{ diagnostics_sites }}.</p>
  <table><thead><tr><th>value</th><th>protection</th><th>meaning</th></tr></thead>
    <tbody>{% for f in wire_rows %}<tr><td class="mono">{{ f.key }}</td><td>{{ f.protection }}</td>
      <td>{{ f.meaning }}</td></tr>{% endfor %}</tbody></table>
</section>

<section id="how-to-read">
  <h2>How to read this</h2>
  <dl class="howto">
    <dt>For the pathologist</dt>
    <dd>Accuracy is the share of held-out test patches classified as labelled; balanced accuracy weighs every class
      equally, so a rare class counts as much as a common one. The 95% confidence interval is the range the accuracy
      would plausibly take on another test set of the same size. The confusion matrix and the per-class table show
      which tissue types are confused; a low recall means that class is often missed.{% if patients %} Where the
      test set names patients, "Per patient" gives the same metrics over patients (each patient's patches
      together), which is closer to a diagnosis; its CIs are wider because there are fewer patients than
      patches.{% endif %}</dd>
    <dt>For the data-protection officer</dt>
    <dd>{{ officer_text }}</dd>
    <dt>For the ML engineer</dt>
    <dd>Flower's {{ strategy_text }} over the screened updates of the trainable tensors of the chosen policy
      (updates weighted by examples); Opacus accounting per site (the smaller of its RDP and PRV bounds),
      cumulative in a ledger on the site's disk. The curves are central test-set metrics per round; patch-level
      CIs are a percentile bootstrap over test examples{% if patients %}, patient-level ones over patients{% else %}
      (the test set names no patients){% endif %}. ECE uses 15 equal-width confidence bins. The full
      configuration, package versions and weight checksum are above; report.json holds the same facts.</dd>
  </dl>
</section>
</main>
<footer>Generated {{ generated }} by fedpath from {{ run.run_dir }} &middot; regenerate with
  <code>python -m server.report RUN_DIR</code></footer>
</body>
</html>
"""
