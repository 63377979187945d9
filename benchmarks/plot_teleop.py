"""Collect bench_teleop.py (real nodes) and bench_teleop_sim.py (virtual clock) results into
docs/results/teleop.json + teleop.csv, and plot RGB PSNR, depth RMSE and delivered fps against
the budget per contender (docs/results/teleop_budgets.png).

    .venv/bin/python benchmarks/plot_teleop.py --nodes a.json b.json --sim s.json --source realsense_d4xx_visp_rbt
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"
COLUMNS = ("mode", "source", "budget_kbps", "contender", "depth_share", "fps", "latency_ms_p50", "latency_ms_p95",
           "rgb_psnr_db", "depth_rmse_mm", "depth_max_err_mm", "kbps_mean", "kbps_max_1s", "skipped",
           "encode_cpu_ms", "decode_cpu_ms", "load_avg_1min", "note")


def _load(paths, mode):
    rows = []
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            if "error" not in r or r.get("fps") is not None:
                rows.append({"mode": mode, **{k: v for k, v in r.items() if k != "error"}})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", nargs="*", default=[], help="bench_teleop.py --json files")
    p.add_argument("--sim", nargs="*", default=[], help="bench_teleop_sim.py --json files")
    p.add_argument("--before", nargs="*", default=[],
                   help="bench_teleop.py --json files measured before a change (stored, not plotted)")
    p.add_argument("--source", default="realsense_d4xx_visp_rbt", help="the source plotted")
    p.add_argument("--notes", default="", help="free text stored in the JSON (machine, load)")
    args = p.parse_args(argv)
    rows = _load(args.nodes, "nodes") + _load(args.sim, "virtual_clock") + _load(args.before, "nodes_before")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "teleop.json").write_text(json.dumps({"notes": args.notes, "results": rows}, indent=1))
    with open(OUT / "teleop.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            load = r.get("load_avg_1min")
            load = "-".join(str(v) for v in load) if isinstance(load, list) else load
            w.writerow([load if c == "load_avg_1min" else
                        (round(r[c], 2) if isinstance(r.get(c), float) else r.get(c, "")) for c in COLUMNS])

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    colours = {"classical": "tab:blue", "classical-h264": "tab:orange", "ros-defaults": "tab:gray",
               "learned": "tab:green"}
    for mode, style in (("nodes", "-o"), ("virtual_clock", "--s")):
        for contender, colour in colours.items():
            pts = sorted((r["budget_kbps"], r) for r in rows
                         if r["mode"] == mode and r["contender"] == contender and r["source"] == args.source)
            if not pts:
                continue
            label = f"{contender} ({'real nodes, loaded' if mode == 'nodes' else 'virtual 10 Hz clock'})"
            for ax, key in zip(axes, ("rgb_psnr_db", "depth_rmse_mm", "fps")):
                xy = [(b, r[key]) for b, r in pts if r.get(key) is not None]
                ax.plot([x for x, _ in xy], [y for _, y in xy], style, color=colour, label=label, markersize=4)
    for ax, title in zip(axes, ("RGB PSNR (dB)", "depth RMSE (mm)", "frames delivered per s")):
        ax.set_xscale("log")
        ax.set_xticks([500, 1000, 2000, 5000])
        ax.set_xticklabels(["500", "1000", "2000", "5000"])
        ax.minorticks_off()
        ax.set_xlabel("budget (kbit/s)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].axhline(32, color="red", lw=0.8, ls=":")
    axes[1].axhline(100, color="red", lw=0.8, ls=":")
    axes[2].axhline(9, color="red", lw=0.8, ls=":")
    axes[1].set_yscale("symlog", linthresh=10)
    axes[2].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{args.source}, 640x480 at 10 Hz; link 1.25x budget, 50 ms, 1 % loss (red: issue 12 floor)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "teleop_budgets.png", dpi=110)
    print(f"wrote {OUT / 'teleop.json'}, teleop.csv, teleop_budgets.png ({len(rows)} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
