"""The demo's results as ranges over several seeds, instead of one run's figures.

    python benchmarks/demo_seeds.py [--config pipelines/configs/demo.yaml] [--seeds 42 43 44]
                                    [--output outputs/demo-seeds]

Runs the configuration once per seed (``python -m pipelines.run``, one after the other; the seed
drives the synthetic photos, the split, tuning and training), keeps each run's console and full
log under OUTPUT/seed-N/, and prints per configuration the min-max over the seeds of the
headline figures (test split; float32 and full int8, and the variant each bundle ships), which
configuration the compare stage chose, and each run's wall time and console length. Writes
them to OUTPUT/summary.json as well. CPU heavy: a few minutes per seed for the demo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mushroom import variants
from mushroom.evaluation import read_evaluation

ROOT = Path(__file__).resolve().parents[1]

# (label, how to read it from an Evaluation and the shipped variant's key, format)
REF, INT8 = variants.REFERENCE_KEY, variants.FULL_INTEGER_KEY
FIGURES = [
    ("float32 top-1", lambda e, s: e.variants[REF].top1, "{:.3f}"),
    ("int8 top-1", lambda e, s: e.variants[INT8].top1, "{:.3f}"),
    ("int8 - float32 top-1 (points)", lambda e, s: 100 * (e.variants[INT8].top1 - e.variants[REF].top1), "{:+.1f}"),
    ("shipped variant top-1", lambda e, s: e.variants[s].top1, "{:.3f}"),
    ("shipped variant top-5", lambda e, s: e.variants[s].top5, "{:.3f}"),
    ("int8 size MB", lambda e, s: e.variants[INT8].size_mb, "{:.2f}"),
    ("int8 size x float32", lambda e, s: e.int8_vs_float32.size_ratio, "{:.2f}"),
    ("int8 latency ms (1 thread)", lambda e, s: e.variants[INT8].latency.threads_1.median_ms, "{:.2f}"),
    ("int8 latency x float32 (1 thread)", lambda e, s: e.int8_vs_float32.latency_ratio_threads_1, "{:.2f}"),
    ("shipped variant coverage", lambda e, s: e.variants[s].calibrated.policy.coverage, "{:.2f}"),
]


def run_seed(config_path: Path, seed: int, out_dir: Path) -> dict:
    """Run the configuration with ``seed``; return its evaluations, shipped variants and choice."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["seed"] = seed
    config["name"] = f"{config['name']}-seed-{seed}"
    config.setdefault("publish", {})["destination"] = str(out_dir / "published")
    out_dir.mkdir(parents=True, exist_ok=True)
    seeded = out_dir / "config.yaml"
    seeded.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    start, started = time.monotonic(), time.time()
    with open(out_dir / "console.txt", "w", encoding="utf-8") as console:
        code = subprocess.call([sys.executable, "-m", "pipelines.run", str(seeded), "--output", str(out_dir),
                                "--log", str(out_dir / "run.log")], cwd=ROOT, stdout=console,
                               stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if code != 0:
        raise RuntimeError(f"seed {seed}: the run failed (exit {code}); see {out_dir / 'console.txt'}")
    root = out_dir / "pipeline_root"
    evaluations, shipped_keys = {}, {}
    for path in root.rglob("evaluate-model/evaluation/evaluation.json"):
        if path.stat().st_mtime < started:
            continue  # an earlier run into the same folder
        evaluation = read_evaluation(path)
        evaluations[evaluation.model_name] = evaluation
        shipped_keys[evaluation.model_name] = variants.evaluation_key(evaluation.shipped_variant)
    [comparison] = [json.loads(p.read_text(encoding="utf-8")) for p in
                    root.rglob("compare-models/best_evaluation/comparison.json") if p.stat().st_mtime >= started]
    lines = len((out_dir / "console.txt").read_text(encoding="utf-8").splitlines())
    return {"seed": seed, "seconds": seconds, "console_lines": lines, "shipped_keys": shipped_keys,
            "choice": [comparison["best"], comparison["shipped_variant"]],
            "figures": {name: {label: read(e, shipped_keys[name]) for label, read, _ in FIGURES}
                        for name, e in evaluations.items()}}


def ranges(runs: list[dict]) -> str:
    """Markdown: per configuration and figure, min-max over the runs."""
    names = sorted({name for run in runs for name in run["figures"]})
    lines = [f"| figure (test split) | {' | '.join(names)} |", f"|---|{'---|' * len(names)}"]
    for label, _, spec in FIGURES:
        cells = []
        for name in names:
            values = [run["figures"][name][label] for run in runs if name in run["figures"]]
            low, high = spec.format(min(values)), spec.format(max(values))
            cells.append(low if low == high else f"{low} to {high}")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    shipped_variants = [" / ".join(sorted({variants.variant_of_key(run["shipped_keys"][name]) for run in runs}))
                        for name in names]
    lines.append(f"| shipped variant(s) | {' | '.join(shipped_variants)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "pipelines" / "configs" / "demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--output", default=str(ROOT / "outputs" / "demo-seeds"))
    args = parser.parse_args(argv)
    config, output = Path(args.config), Path(args.output)
    if not config.is_file():
        print(f"error: no configuration {config}", file=sys.stderr)
        return 2
    runs = []
    for i, seed in enumerate(args.seeds, 1):
        print(f"[{i}/{len(args.seeds)}] seed {seed}: running {config.name} (console: "
              f"{output / f'seed-{seed}' / 'console.txt'})", flush=True)
        try:
            run = run_seed(config, seed, output / f"seed-{seed}")
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        runs.append(run)
        print(f"[{i}/{len(args.seeds)}] seed {seed}: {run['seconds']:.0f}s, {run['console_lines']} console lines, "
              f"chose {run['choice'][0]} ({run['choice'][1]})", flush=True)
    (output / "summary.json").write_text(json.dumps(runs, indent=2), encoding="utf-8")
    print(f"\n{config.name}, seeds {', '.join(map(str, args.seeds))} (min to max):\n")
    print(ranges(runs))
    choices = ", ".join(f"seed {r['seed']}: {r['choice'][0]} ({r['choice'][1]})" for r in runs)
    print(f"\nchosen: {choices}")
    seconds = [r["seconds"] for r in runs]
    lines = [r["console_lines"] for r in runs]
    print(f"wall time per run: {min(seconds) / 60:.1f} - {max(seconds) / 60:.1f} min; "
          f"console: {min(lines)} - {max(lines)} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
