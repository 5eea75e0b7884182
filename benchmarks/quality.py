"""The quality table: every method and its ablations, 10 clients, 30 rounds, three seeds, in one command.

Settings: IID and Dirichlet(0.5) for FedAvg, FedCompress and the autoencoder;
the skewed split of the REFT benchmark (three weak devices hold 90% of classes
7-9) for REFT against FedAvg with and without the weak devices. Each cell is
a real run (``compare.run_variant``: server and client processes over
loopback gRPC), reused when its folder holds a finished run of the same
command, so the table grows as runs finish and an interrupted build resumes.
The full grid is about 60 runs of 15-45 minutes each on 2 cores;
``--reuse-only`` builds the table from the finished runs alone and lists the
missing cells.

Writes ``benchmarks/results/quality.{json,md,png}`` and
``docs/benchmarks/quality.md``: per row, the mean final accuracy over the
seeds with its range, the difference from the setting's FedAvg in points
(per seed, then averaged), bytes up and down, total bytes against that
FedAvg and against a float32 FedAvg, and (REFT) each tier's sub-model
accuracy.

    python benchmarks/quality.py               # run what is missing, then write the table
    python benchmarks/quality.py --reuse-only  # the table from finished runs only
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compare import ROOT, run_variant, slug, summarise, tier_rows

from fedsqueeze.apps.plotting import plot_quality

CLIENTS, ROUNDS, SEEDS, DATA = 10, 30, (0, 1, 2), "fashion-mnist"
CORRECTION = "correction=sparse(ratio=0.0005)|dense(dtype=float16)|zstd"
LEAN_AE = "warmup_codec=cluster(k=4)|zstd,hidden=16,decoder_codec=cluster(k=16)|zstd"
BUDGETS = "--budgets 1,1,1,1,0.3,0.3,0.3,0.1,0.1,0.1"
METHOD_ROWS = {   # label: extra simulate arguments; the first row is the setting's baseline
    "FedAvg": "--epochs 2",
    "FedCompress delta": "--epochs 1 --method fedcompress(kd_epochs=2)",
    "FedCompress, model uploads (ablation)": "--epochs 1 --method fedcompress(kd_epochs=2,upload=model)",
    "AE lean warm-up and decoders, EF": f"--epochs 2 --method ae({CORRECTION},{LEAN_AE})",
    "AE chunk 3136 latent 16, EF": f"--epochs 2 --method ae({CORRECTION})",
}
REFT_ROWS = {
    "FedAvg, all devices full model": "--epochs 2",
    "FedAvg, weak devices dropped": "--epochs 2 --clients 4 --partitions 10",
    "REFT, in-place distillation": f"--epochs 2 {BUDGETS} --method reft",
    "REFT, no in-place distillation (ablation)": f"--epochs 2 {BUDGETS} --method reft(inplace_kd=0)",
}


@dataclass(frozen=True)
class Setting:
    name: str
    partition: str
    rows: dict[str, str]

    def runs(self, seed: int, out: Path) -> Path:
        """The folder ``compare.py`` keeps this setting's runs in, so both share finished runs."""
        return out / "runs" / slug(f"{DATA}_{CLIENTS}c_{ROUNDS}r_{self.partition}_s{seed}")

    def common(self, seed: int) -> list[str]:
        return ["--data", DATA, "--clients", str(CLIENTS), "--rounds", str(ROUNDS), "--partition", self.partition,
                "--seed", str(seed)]


SETTINGS = (Setting("IID", "iid", METHOD_ROWS), Setting("Dirichlet(0.5)", "dirichlet(alpha=0.5)", METHOD_ROWS),
            Setting("skewed", "skewed(last=3,classes=3,share=0.9)", REFT_ROWS))


def finished(setting: Setting, seed: int, label: str, out: Path) -> dict[str, Any] | None:
    """The finished run of this cell, if its folder holds one of the same command."""
    record = setting.runs(seed, out) / slug(label) / "compare.json"
    if not record.exists():
        return None
    report = json.loads(record.read_text())
    command = shlex.join(["simulate", *setting.common(seed), *shlex.split(setting.rows[label])])
    return report if report.get("command") == command else None


def collect(setting: Setting, out: Path, reuse_only: bool) -> tuple[dict[int, dict[str, dict[str, Any]]], list[str]]:
    """Per seed, the reports of the rows that have one (all of them unless ``reuse_only``); the missing cells."""
    reports: dict[int, dict[str, dict[str, Any]]] = {}
    missing = []
    for seed in SEEDS:
        reports[seed] = {}
        for label, extra in setting.rows.items():
            report = (finished(setting, seed, label, out) if reuse_only   # run_variant reuses finished runs itself
                      else run_variant(label, shlex.split(extra), setting.common(seed), setting.runs(seed, out)))
            if report is None:
                missing.append(f"{setting.name}, seed {seed}: {label}")
            else:
                reports[seed][label] = report
    return reports, missing


def float32_total(row: dict[str, Any]) -> float:
    """Bytes a float32 FedAvg would have sent for the same updates and downloads."""
    return (row["bytes_up"] * row["uplink_reduction_vs_float32"]
            + row["bytes_down"] * row["downlink_reduction_vs_float32"])


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def aggregate(setting: Setting, reports: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method of the setting: means and ranges over the seeds that ran it and its baseline."""
    baseline = next(iter(setting.rows))
    per_seed: dict[str, list[dict[str, Any]]] = {label: [] for label in setting.rows}
    tiers: dict[str, dict[float, list[float]]] = {label: {} for label in setting.rows}
    for seed_reports in reports.values():
        if baseline not in seed_reports:
            continue   # a seed's rows are measured against that seed's baseline
        rows = summarise({baseline: seed_reports[baseline],
                          **{k: v for k, v in seed_reports.items() if k != baseline}})
        for row in rows:
            row["uplink_vs_baseline"] = rows[0]["bytes_up"] / row["bytes_up"]
            per_seed[row["variant"]].append(row)
        for tier in tier_rows({k: v for k, v in seed_reports.items() if k != baseline}):
            if tier["sub_model_accuracy"] is not None:
                tiers[tier["variant"]].setdefault(tier["width"], []).append(tier["sub_model_accuracy"])
    table = []
    for label, rows in per_seed.items():
        if not rows:
            continue
        table.append({
            "setting": setting.name, "variant": label, "seeds": len(rows),
            "final_accuracy": spread([r["final_accuracy"] for r in rows]),
            "accuracy_delta_points": spread([r["accuracy_delta_points"] for r in rows]),
            "bytes_up": statistics.fmean(r["bytes_up"] for r in rows),
            "bytes_down": statistics.fmean(r["bytes_down"] for r in rows),
            "total_vs_baseline": spread([r["communication_reduction_vs_baseline"] for r in rows]),
            "uplink_vs_baseline": spread([r["uplink_vs_baseline"] for r in rows]),
            "total_vs_float32": spread([float32_total(r) / (r["bytes_up"] + r["bytes_down"]) for r in rows]),
            "tier_accuracy": {width: spread(values) for width, values in sorted(tiers[label].items(), reverse=True)},
        })
    return table


def cell(value: dict[str, float], form: str, unit: str = "") -> str:
    """``mean (min to max)``, or the mean alone when one seed ran."""
    if value["min"] == value["max"]:
        return f"{value['mean']:{form}}{unit}"
    return f"{value['mean']:{form}}{unit} ({value['min']:{form}} to {value['max']:{form}})"


def markdown(table: list[dict[str, Any]], missing: list[str]) -> str:
    head = ("| setting | variant | seeds | final acc. | Δ vs FedAvg (pts) | bytes up | bytes down | "
            "total vs FedAvg | uplink vs FedAvg | total vs float32 FedAvg | sub-model acc. per width |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = [f"| {r['setting']} | {r['variant']} | {r['seeds']} | {cell(r['final_accuracy'], '.4f')} | "
             f"{cell(r['accuracy_delta_points'], '+.2f')} | {r['bytes_up']:,.0f} | {r['bytes_down']:,.0f} | "
             f"{cell(r['total_vs_baseline'], '.2f', 'x')} | {cell(r['uplink_vs_baseline'], '.1f', 'x')} | "
             f"{cell(r['total_vs_float32'], '.2f', 'x')} | "
             + ", ".join(f"{w:g}: {cell(a, '.4f')}" for w, a in r["tier_accuracy"].items()) + " |"
             for r in table]
    gaps = ("\nMissing cells (not yet run; `python benchmarks/quality.py` runs them):\n\n"
            + "\n".join(f"- {m}" for m in missing) + "\n") if missing else ""
    return head + "\n".join(lines) + "\n" + gaps


def docs_page(table_md: str) -> str:
    return f"""# Quality table

Generated by `.venv/bin/python benchmarks/quality.py` (add `--reuse-only` to
build it from finished runs alone); do not edit by hand. {DATA}, {CLIENTS}
clients, {ROUNDS} rounds, seeds {", ".join(map(str, SEEDS))}. Means over the seeds
that ran, with their range in brackets. Δ and "vs FedAvg" compare each seed
with the same seed's baseline (the first row of its setting): seed 0's FedAvg
ran before the lossless default and sent raw float32, later seeds send
`dense(shuffle=true)|zstd` (about 1.2x smaller), so "total vs float32 FedAvg"
is given too. REFT's sub-model accuracy is each tier's model cut from the
final global model, on the test set. The commands of every row are in
`benchmarks/quality.py`; results in `benchmarks/results/quality.{{json,md,png}}`.

{table_md}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse-only", action="store_true", help="build the table from finished runs only")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks" / "quality.md"), help="docs page to write")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table, missing = [], []
    for setting in SETTINGS:
        reports, gaps = collect(setting, out, args.reuse_only)
        table += aggregate(setting, reports)
        missing += gaps
    table_md = markdown(table, missing)
    (out / "quality.md").write_text(table_md)
    (out / "quality.json").write_text(json.dumps({"rows": table, "missing": missing}, indent=2) + "\n")
    plot_quality(table, out / "quality.png", f"{DATA}, {CLIENTS} clients, {ROUNDS} rounds")
    Path(args.docs).write_text(docs_page(table_md))
    print(table_md + f"\nwrote {out / 'quality'}.json, .md, .png and {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
