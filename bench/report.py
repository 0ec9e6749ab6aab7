"""Turns bench/compare.sh's raw results into compare.csv, compare.md and compare.png."""
import csv
import json
import os
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]

# Interleaved rounds give several rows per (tool, op, ranks, size): report their medians.
samples = defaultdict(list)  # (tool, op, ranks, bytes) -> seconds
peaks = {}  # (tool, ranks, bytes) or (tool, op, ranks, bytes) -> peak resident MiB per process
with open(f"{out}/compare-distckpt.csv") as f:
    for r in csv.DictReader(f):
        n, b = int(r["ranks"]), int(r["state_bytes"])
        gb = b / 1e9
        peaks[("distckpt", n, b)] = max(peaks.get(("distckpt", n, b), 0), float(r["peak_rss_mib"]))
        for tool, op, secs in [
            ("distckpt", "save", gb / float(r["save_gbps"])),
            # On one machine distckpt reads per rank by default (read-once is for many nodes).
            ("distckpt", "load (every rank whole)", float(r["replicated_full_reads_s"])),
            ("distckpt (read once)", "load (every rank whole)", float(r["replicated_read_once_s"])),
            ("distckpt", "load (1/N each)", gb / float(r["load_gbps"])),
            ("distckpt (in place)", "load (1/N each)", gb / float(r["load_in_place_gbps"])),
            ("write+fsync / read", "save", gb / float(r["raw_write_gbps"])),
            ("write+fsync / read", "load (1/N each)", gb / float(r["raw_read_gbps"])),
        ]:
            samples[(tool, op, n, b)].append(secs)
with open(f"{out}/compare-torch.jsonl") as f:
    for line in f:
        if line.startswith("{"):
            r = json.loads(line)
            key = (r["tool"], r["op"], r["ranks"], r["bytes"])
            samples[key].append(r["seconds"])
            peaks[key] = max(peaks.get(key, 0), r["peak_rss_mib"])
            if r["tool"] == "DCP (1 thread)":
                k2 = ("DCP", r["ranks"], r["bytes"])
                peaks[k2] = max(peaks.get(k2, 0), r["peak_rss_mib"])
if os.path.exists(f"{out}/compare-reshard.csv"):
    with open(f"{out}/compare-reshard.csv") as f:
        for n, b, mode, secs, peak in csv.reader(f):
            tool = "distckpt" if mode == "staged" else f"distckpt ({mode})"
            key = (tool, "re-sharded load", int(n), int(b))
            samples[key].append(float(secs))
            peaks[key] = float(peak)
rows = [(t, op, n, b, statistics.median(v)) for (t, op, n, b), v in samples.items()]

with open(f"{out}/compare.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["tool", "op", "ranks", "state_bytes", "seconds_median", "gbps", "runs"])
    for t, op, n, b, s in sorted(rows, key=lambda r: (r[3], r[2], r[1], r[0])):
        w.writerow([t, op, n, b, f"{s:.3f}", f"{b / 1e9 / s:.3f}", len(samples[(t, op, n, b)])])

index = {(t, op, n, b): s for t, op, n, b, s in rows}
sizes = sorted({b for *_, b, _ in rows})
lines = ["| state | ranks | op | distckpt GB/s | in place | DCP 1 thread | DCP default | torch.save | raw | DCP / distckpt | peak MiB/process distckpt, DCP |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
for b in sizes:
    for n in sorted({n for _, _, n, bb, _ in rows if bb == b}):
        for op in ("save", "load (every rank whole)", "load (1/N each)"):
            def g(tool, op=op):
                s = index.get((tool, op, n, b))
                return b / 1e9 / s if s else None
            d = g("distckpt")
            if d is None:
                continue
            raw = g("write+fsync / read", op if op != "load (every rank whole)" else "load (1/N each)")
            dcp = g("DCP (1 thread)")
            cells = [f"{b / 2**30:.2f} GiB", str(n), op, f"{d:.2f}"]
            for v in (g("distckpt (in place)"), dcp, g("DCP (default threads)"), g("torch.save"), raw):
                cells.append(f"{v:.2f}" if v else "-")
            cells.append(f"{dcp / d:.2f}x" if dcp else "-")
            pd, pt = peaks.get(("distckpt", n, b)), peaks.get(("DCP", n, b))
            cells.append(f"{pd:.0f}, {pt:.0f}" if pd and pt else "-")
            lines.append("| " + " | ".join(cells) + " |")
# Elastic resume and export: seconds, GB/s and peak memory per process, and DCP against distckpt.
extra = [(t, op, n, b, s) for t, op, n, b, s in rows if op in ("re-sharded load", "export to one .pt")]
if extra:
    lines += ["", "| state | op | tool | seconds | GB/s | peak MiB/process | time / distckpt's |",
              "|---|---|---|---|---|---|---|"]
    for t, op, n, b, s in sorted(extra, key=lambda r: (r[3], r[1], r[0])):
        base = [x for x in extra if x[1] == op and x[3] == b and x[0] in ("distckpt", "distckpt export")]
        ratio = f"{s / base[0][4]:.2f}x" if base else "-"
        label = "4 -> 2 ranks, every rank whole" if op == "re-sharded load" else op
        peak = peaks.get((t, op, n, b))
        lines.append(f"| {b / 2**30:.2f} GiB | {label} | {t} | {s:.2f} | {b / 1e9 / s:.2f} | "
                     f"{peak:.0f} | {ratio} |" if peak else "| - |")
open(f"{out}/compare.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib missing: no plot")
    sys.exit(0)
counts = sorted({1, max(n for _, _, n, _, _ in rows)})
fig, axes = plt.subplots(len(counts), 2, figsize=(11, 4 * len(counts)), squeeze=False)
for row, ranks in zip(axes, counts):
    for ax, op in zip(row, ("save", "load (every rank whole)")):
        for tool in sorted({t for t, o, *_ in rows if o == op}):
            pts = sorted((b, b / 1e9 / s) for t, o, n, b, s in rows
                         if t == tool and o == op and n == ranks)
            if pts:
                ax.plot([p[0] / 2**30 for p in pts], [p[1] for p in pts], marker="o", label=tool)
        ax.set_title(f"{op}, {ranks} rank{'s' if ranks > 1 else ''}")
        ax.set_xlabel("state size (GiB)")
        ax.set_ylabel("GB/s")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(f"{out}/compare.png", dpi=110)
print(f"plot: {out}/compare.png")
