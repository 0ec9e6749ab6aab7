"""Turns bench/scale.sh's raw results into scale.md (tables, with the aims of the scale work
next to the measured ratios) and scale.png. usage: report_scale.py RESULTS_DIR"""
import csv
import json
import os
import sys
from collections import defaultdict

out = sys.argv[1]
SWEEP = ["ranks", "tensors", "elems", "save", "coord", "again", "coord_again", "load", "disk", "ok"]
sweep = [dict(zip(SWEEP, map(float, row))) for row in csv.reader(open(f"{out}/scale.csv"))]
dcp = [json.loads(line) for line in open(f"{out}/scale-dcp.jsonl") if line.strip()]
dcp_sweep = {d["tensors"]: d for d in dcp if d["bytes"] == d["tensors"] * 64}
dcp_mix = {d["ranks"]: d for d in dcp if d["bytes"] != d["tensors"] * 64}
mix = defaultdict(dict)  # (ranks, op) -> tool -> seconds
mix_bytes = 0
for ranks, nbytes, _, op, tool, secs in csv.reader(open(f"{out}/scale-mix.csv")):
    mix[(int(ranks), op)][tool] = float(secs)
    mix_bytes = int(nbytes)

us = lambda s, n: f"{s / n * 1e6:.1f}"
lines = ["| tensors | distckpt save s (us/tensor) | coordination s | repeated save s | "
         "coordination s | load s (us/tensor) | on disk / bytes | DCP save s (us/tensor) | "
         "DCP repeated save s | DCP load s (us/tensor) | DCP on disk / bytes |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in sweep:
    n = int(r["tensors"])
    d = dcp_sweep.get(n)
    theirs = (f"{d['save']:.2f} ({us(d['save'], n)}) | {d['save_again']:.2f} | "
              f"{d['load']:.2f} ({us(d['load'], n)}) | {d['disk_ratio']:.2f}x" if d
              else "- | - | - | -")
    lines.append(f"| {n:,} | {r['save']:.2f} ({us(r['save'], n)}) | {r['coord']:.2f} | "
                 f"{r['again']:.2f} | {r['coord_again']:.2f} | {r['load']:.2f} "
                 f"({us(r['load'], n)}) | {r['disk']:.3f}x | {theirs} |")
per = lambda key: [r[key] / r["tensors"] for r in sweep]
flat = {k: max(per(k)) / min(per(k)) for k in ("save", "load")}
largest = max(sweep, key=lambda r: r["tensors"])
lines += ["", f"Time per tensor, largest over smallest across the sweep: save {flat['save']:.2f}x, "
          f"load {flat['load']:.2f}x (aim: within 2x). At {int(largest['tensors']):,} tensors: "
          f"save {largest['save']:.1f} s, load {largest['load']:.1f} s (aim: under 60 s each).", ""]

if os.path.exists(f"{out}/scale-disk.csv"):
    lines += ["| tensors | bytes each | on disk / tensor bytes | aim |", "|---:|---:|---:|---:|"]
    for row in csv.reader(open(f"{out}/scale-disk.csv")):
        r = dict(zip(SWEEP, map(float, row)))
        each = int(r["elems"]) * 4
        aim = "1.10x" if each <= 768 * 4 else ("1.01x" if each >= 1 << 20 else "-")
        lines.append(f"| {int(r['tensors']):,} | {each:,} | {r['disk']:.3f}x | {aim} |")
    lines.append("")
lines += [f"Realistic mix, {mix_bytes / 1e9:.2f} GB (seconds, median of the rounds; "
          "'x raw' = raw time / distckpt time, i.e. distckpt's throughput as a fraction of "
          "the storage limit's):", "",
          "| ranks | op | distckpt s | raw s | x raw | DCP s |", "|---:|---|---:|---:|---:|---:|"]
for (ranks, op), tools in sorted(mix.items()):
    d = dcp_mix.get(ranks)
    theirs = {"save": d and d["save"], "load whole": d and d["load"]}.get(op) if d else None
    lines.append(f"| {ranks} | {op} | {tools['distckpt']:.2f} | {tools['raw']:.2f} | "
                 f"{tools['raw'] / tools['distckpt']:.2f}x | "
                 f"{f'{theirs:.2f}' if theirs else '-'} |")
ranks = sorted({k[0] for k in mix})
if 1 in ranks and max(ranks) > 1:
    ratio = mix[(max(ranks), "load whole")]["distckpt"] / mix[(1, "load whole")]["distckpt"]
    lines += ["", f"Whole-state load on {max(ranks)} ranks over 1 rank: {ratio:.2f}x "
              "(aim: within 1.5x)."]
open(f"{out}/scale.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
n = [r["tensors"] for r in sweep]
a.loglog(n, per("save"), "o-", label="distckpt save")
a.loglog(n, per("again"), "o:", label="distckpt repeated save")
a.loglog(n, per("load"), "s-", label="distckpt load")
dn = sorted(dcp_sweep)
a.loglog(dn, [dcp_sweep[k]["save"] / k for k in dn], "o--", label="DCP save")
a.loglog(dn, [dcp_sweep[k]["load"] / k for k in dn], "s--", label="DCP load")
a.set_xlabel("tensors (16 floats each), 4 ranks")
a.set_ylabel("seconds per tensor")
a.legend()
a.grid(True, which="both", alpha=0.3)
keys = sorted(mix)
b.bar(range(len(keys)), [mix[k]["raw"] / mix[k]["distckpt"] for k in keys])
b.axhline(0.9, color="red", linestyle="--", label="aim 0.9x")
b.set_xticks(range(len(keys)), [f"{op}\n{r} rank(s)" for r, op in keys], fontsize=7)
b.set_ylabel("distckpt throughput / raw")
b.set_title(f"realistic mix, {mix_bytes / 1e9:.2f} GB")
b.legend()
fig.tight_layout()
fig.savefig(f"{out}/scale.png", dpi=110)
