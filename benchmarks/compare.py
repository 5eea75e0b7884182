"""Run named `fedsqueeze simulate` variants on the same task and compare them.

Each variant is a real run (server and client processes over loopback gRPC).
The first variant is the baseline the others are measured against. Runs live
in ``OUT/runs/<setting>/<label>``; a run whose recorded command matches is
reused, not repeated, so comparisons on the same setting share their
baseline and an interrupted comparison resumes where it stopped. Writes
``OUT/NAME.json`` (every report plus the summary), ``OUT/NAME.md`` (the table)
and ``OUT/NAME.png`` (accuracy against cumulative bytes), and prints the table.

    python benchmarks/compare.py --name codecs --rounds 5 -- \\
        "dense FedAvg=" "cluster16+zstd, EF=--uplink cluster(k=16)|zstd"

A variant is ``LABEL=ARGS``: extra simulate arguments, split like a shell would.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedsqueeze.apps.plotting import plot_accuracy_vs_bytes

ROOT = Path(__file__).resolve().parent.parent


def slug(text: str) -> str:
    """A folder name for ``text``: letters, digits, ``.``, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def run_variant(label: str, extra: list[str], common: list[str], runs: Path) -> dict[str, Any]:
    """Run one variant, or reuse its finished run when the recorded command is the same."""
    run_dir = runs / slug(label)
    command = shlex.join(["simulate", *common, *extra])
    record = run_dir / "compare.json"
    if record.exists():
        report = json.loads(record.read_text())
        if report.get("command") == command:
            print(f"\n=== {label}: reusing {run_dir} ({command})", flush=True)
            return report
    print(f"\n=== {label}: {command}", flush=True)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fedsqueeze.apps", *shlex.split(command), "--out", str(run_dir)],
                            cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"variant {label!r} failed (exit {result.returncode}); logs in {run_dir / 'logs'}")
    report = json.loads((run_dir / "report.json").read_text())
    report["wall_seconds"] = time.monotonic() - started
    report["command"] = command
    storage_tmp = record.with_suffix(".tmp")
    storage_tmp.write_text(json.dumps(report, indent=2) + "\n")
    storage_tmp.replace(record)
    return report


def rounds_to_reach(report: dict[str, Any], target: float) -> tuple[int | None, int | None]:
    """(round, cumulative bytes up+down) when test accuracy first reached ``target``."""
    total = 0
    for r in report["rounds"]:
        total += r["bytes_up"] + r["bytes_down"]
        if r["accuracy"] >= target:
            return r["round"], total
    return None, None


def summarise(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant. Every "vs float32" figure divides one float32 copy of the whole model per
    committed update (taken from the baseline's first round, so runs recorded before the server defined
    ``dense_bytes_up`` that way compare alike) by the bytes that crossed the wire."""
    baseline = next(iter(reports.values()))
    base_total = baseline["bytes_up"] + baseline["bytes_down"]
    float32_update = baseline["rounds"][0]["dense_bytes_up"] / baseline["rounds"][0]["updates"]
    target = 0.95 * baseline["final_accuracy"]
    rows = []
    for label, report in reports.items():
        rounds = report["rounds"]
        up_per_round = report["bytes_up"] / len(rounds)
        total = report["bytes_up"] + report["bytes_down"]
        reached_round, reached_bytes = rounds_to_reach(report, target)
        rows.append({
            "variant": label,
            "final_accuracy": report["final_accuracy"],
            "accuracy_delta_points": 100 * (report["final_accuracy"] - baseline["final_accuracy"]),
            "bytes_up": report["bytes_up"],
            "bytes_down": report["bytes_down"],
            "uplink_reduction_vs_float32": float32_update * sum(r["updates"] for r in rounds) / report["bytes_up"],
            "downlink_reduction_vs_float32": report["dense_bytes_down"] / report["bytes_down"],
            "bytes_up_per_round": up_per_round,
            "communication_reduction_vs_baseline": base_total / total,
            "round_to_95pct_of_baseline": reached_round,
            "bytes_to_95pct_of_baseline": reached_bytes,
            "wall_seconds": report["wall_seconds"],
        })
        last = rounds[-1]["metrics"]
        if "model_bytes" in last:   # the strategy reports its global model's encoded size
            float32_model = rounds[0]["dense_bytes_down"] / rounds[0]["selected"]
            rows[-1]["model_size_reduction_vs_float32"] = float32_model / last["model_bytes"]
        if "k" in last:             # FedCompress: the number of clusters per round
            rows[-1]["k_trajectory"] = k_trajectory([int(r["metrics"]["k"]) for r in rounds])
        if "payload_bytes_latent" in last:   # autoencoder: latent rounds, and the uplink by kind of payload
            latent = [r for r in rounds if r["metrics"]["clients_latent"] == r["updates"] > 0]
            rows[-1]["latent_rounds"] = len(latent)
            rows[-1]["latent_round_uplink_reduction_vs_float32"] = (
                float32_update * sum(r["updates"] for r in latent) / sum(r["bytes_up"] for r in latent)
                if latent else None)
            rows[-1]["uplink_payload_bytes"] = {
                kind: int(sum(r["metrics"].get(f"payload_bytes_{kind}", 0) for r in rounds))
                for kind in ("warmup", "decoder", "latent", "coarse", "correction")}
    return rows


def k_trajectory(ks: list[int]) -> str:
    """Run-length form, e.g. ``8 x12, 9 x5``."""
    runs: list[list[int]] = []
    for k in ks:
        if runs and runs[-1][0] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    return ", ".join(f"{k} x{n}" for k, n in runs)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| variant | final acc. | Δ vs baseline (pts) | bytes up | bytes down | up vs float32 | "
            "down vs float32 | total vs baseline | bytes to 95% of baseline acc. | model size vs float32 | K |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = [f"| {r['variant']} | {r['final_accuracy']:.4f} | {r['accuracy_delta_points']:+.2f} | "
             f"{r['bytes_up']:,} | {r['bytes_down']:,} | {r['uplink_reduction_vs_float32']:.2f}x | "
             f"{r['downlink_reduction_vs_float32']:.2f}x | {r['communication_reduction_vs_baseline']:.2f}x | "
             + (f"{r['bytes_to_95pct_of_baseline']:,} (round {r['round_to_95pct_of_baseline']})"
                if r["bytes_to_95pct_of_baseline"] else "not reached") + " | "
             + (f"{r['model_size_reduction_vs_float32']:.2f}x" if "model_size_reduction_vs_float32" in r else "1.00x")
             + f" | {r.get('k_trajectory', '')} |"
             for r in rows]
    return head + "\n".join(lines) + "\n"


def autoencoder_markdown(rows: list[dict[str, Any]]) -> str:
    rows = [r for r in rows if "latent_rounds" in r]
    if not rows:
        return ""
    head = ("| variant | latent rounds | uplink per latent round vs float32 | warm-up | decoders | latents | "
            "corrections | total up vs baseline |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        ratio = r["latent_round_uplink_reduction_vs_float32"]
        kinds = r["uplink_payload_bytes"]
        lines.append(f"| {r['variant']} | {r['latent_rounds']} | " + (f"{ratio:.0f}x" if ratio else "") + " | "
                     f"{kinds['warmup']:,} | {kinds['decoder']:,} | {kinds['latent']:,} | {kinds['correction']:,} | "
                     f"{r['uplink_vs_baseline']:.1f}x |")
    return ("\nAutoencoder uplink, payload bytes by kind over the whole run (the wire adds framing):\n\n"
            + head + "\n".join(lines) + "\n")


def tier_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per width tier of every variant that reports tiers (REFT): its sub-model's costs, accuracy and bytes."""
    rows = []
    for label, report in reports.items():
        last = report["rounds"][-1]["metrics"]
        widths = sorted({key.split("_")[1] for key in last if key.startswith("tier_")}, key=float, reverse=True)
        for width in widths:
            tier = f"tier_{width}"
            rows.append({
                "variant": label, "width": float(width),
                "clients": int(last[f"{tier}_clients"]),
                "sub_model_accuracy": last.get(f"{tier}_accuracy"),
                "params": int(last[f"{tier}_params"]),
                "train_flops_per_sample": last[f"{tier}_train_flops_per_sample"],
                "train_memory_bytes": int(last[f"{tier}_train_memory_bytes"]),
                "payload_bytes_up": int(sum(r["metrics"][f"{tier}_payload_bytes_up"] for r in report["rounds"])),
                "payload_bytes_down": int(sum(r["metrics"][f"{tier}_payload_bytes_down"] for r in report["rounds"])),
            })
    return rows


def tier_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = ("| variant | width | clients | sub-model acc. | params | train GFLOPs/sample | train memory (MB) | "
            "payload up | payload down |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| {r['variant']} | {r['width']:g} | {r['clients']} | "
             + (f"{r['sub_model_accuracy']:.4f}" if r["sub_model_accuracy"] is not None else "") + " | "
             f"{r['params']:,} | {r['train_flops_per_sample'] / 1e9:.4f} | {r['train_memory_bytes'] / 1e6:.1f} | "
             f"{r['payload_bytes_up']:,} | {r['payload_bytes_down']:,} |" for r in rows]
    return "\nPer tier (sub-models cut from the final global model; payload bytes summed over all rounds):\n\n" \
        + head + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="name of this comparison (output file stem)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("variants", nargs="+", help="LABEL=EXTRA SIMULATE ARGS; the first is the baseline")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--data", args.data, "--clients", str(args.clients), "--rounds", str(args.rounds),
              "--partition", args.partition, "--seed", str(args.seed)]
    runs = out / "runs" / slug(f"{args.data}_{args.clients}c_{args.rounds}r_{args.partition}_s{args.seed}")
    reports = {}
    for variant in args.variants:
        label, _, extra = variant.partition("=")
        reports[label] = run_variant(label, shlex.split(extra), common, runs)
    rows = summarise(reports)
    for row in rows:
        row["uplink_vs_baseline"] = rows[0]["bytes_up"] / row["bytes_up"]
    tiers = tier_rows(reports)
    table = markdown(rows) + autoencoder_markdown(rows) + tier_markdown(tiers)
    setting = (f"{args.data}, {args.clients} clients, {args.partition}, {args.rounds} rounds, seed {args.seed}")
    (out / f"{args.name}.md").write_text(f"{setting}\n\n{table}")
    summary = {"setting": setting, "summary": rows, "tiers": tiers, "reports": reports}
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_accuracy_vs_bytes(list(reports.items()), out / f"{args.name}.png", f"{args.name}: {setting}")
    print(f"\n{setting}\n\n{table}\nwrote {out / args.name}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
