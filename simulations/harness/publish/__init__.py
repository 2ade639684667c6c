"""Assemble docs/BENCHMARKS.md from the experiment and benchmark outputs.

    python -m simulations.harness.publish

Reads `docs/results/<experiment>[-quick]/results.json` (re-rendering its table.md and plot.png) and
`docs/results/bench/<bench>[-quick].jsonl` (+ .meta.json), and rewrites BENCHMARKS.md from
them. Every number in that file comes from those outputs, each with the command that made
it; the file is generated, never edited by hand.
"""

from __future__ import annotations

from common.paths import REPO
from simulations.harness.publish.bench import bench_section
from simulations.harness.publish.experiments import EXPERIMENTS, experiment_section
from simulations.harness.publish.texts import GPU, INTRO, PATHMNIST

OUT = REPO / "docs" / "BENCHMARKS.md"


def render() -> str:
    sections = [INTRO, "## Experiments\n"]
    sections += [experiment_section(name) for name in EXPERIMENTS]
    sections += ["## Benchmarks\n", bench_section(), PATHMNIST, GPU]
    return "\n".join(sections)


def main() -> int:
    OUT.write_text(render())
    print(OUT)
    return 0
