#!/usr/bin/env python3
"""The classic recipe (GPT-2 + AdamW, nanoGPT's) against the modern one (arch = "modern" +
Muon) on this machine, for the same wall-clock time, over several seeds (issue #19;
results in docs/training.md).

    cargo build --release -p mlx-gpt-cli && cargo xtask fetch-data shakespeare_char
    python3 scripts/head_to_head.py --pair baby --seeds 0 1 2 3
    # the large pair on a shorter, equal schedule (its presets' 5,000 steps are ~8 h a run
    # on 2 cores); arguments after `--` go to both recipes' train and eval:
    python3 scripts/head_to_head.py --pair shakespeare_char --eval_every 25 -- \
        --max_iters 100 --lr_decay_iters 100 --warmup_iters 10 --eval_iters 1

Each run trains its preset with a checkpoint at every evaluation; afterwards every
checkpoint's exact val loss and bits per byte are computed (`mlx-gpt eval --eval_full`), and
placed at the run's training time at that iteration (the sum of its steps' times in
metrics.jsonl: evaluations and checkpoint writes are not counted, for either recipe). The
presets are sized to take about the same time; the comparison is made at the time the
faster one stops (each curve interpolated there), and at each run's end. Writes
OUT/PAIR/results.json and OUT/PAIR/curves.svg (both recipes, every seed thin, the mean
thick), and prints the table for docs/training.md. No dependency beyond Python 3.
"""
import argparse
import json
import pathlib
import re
import statistics
import subprocess
import sys

PAIRS = {
    # name: [(recipe, preset, eval_interval)]
    "baby": [("gpt2 + AdamW", "baby_shakespeare_char", 200), ("modern + Muon", "baby_modern_shakespeare_char", 80)],
    "shakespeare_char": [("gpt2 + AdamW", "train_shakespeare_char", 250), ("modern + Muon", "modern_shakespeare_char", 250)],
}
EXACT = re.compile(r"exact val loss ([0-9.]+), ([0-9.]+) bits per byte")


def run(cmd, log):
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")


def train_seconds(out):
    """Cumulative training time (s) at each iteration, from metrics.jsonl."""
    total, at = 0.0, {0: 0.0}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            total += float(r["ms"]) / 1000.0
            at[r["iter"] + 1] = total
    return at


def curve(binary, preset, out, extra):
    at = train_seconds(out)
    points = []
    for ckpt in sorted((out / "checkpoints").glob("iter-*")):
        it = int(ckpt.name.split("-")[1])
        log = out / f"eval-{it}.log"
        run([binary, "eval", preset, "--init_from", str(ckpt), "--eval_full", "true", "--out_dir", str(out / "eval")] + extra, log)
        m = EXACT.findall(log.read_text())
        loss, bpb = float(m[-1][0]), float(m[-1][1])
        points.append({"iter": it, "seconds": at.get(it, max(at.values())), "exact_val_loss": loss, "bits_per_byte": bpb})
    return points


def at_time(points, t):
    """The curve's loss at time t (linear between checkpoints; the last one beyond)."""
    for p, q in zip(points, points[1:]):
        if p["seconds"] <= t <= q["seconds"]:
            w = (t - p["seconds"]) / max(q["seconds"] - p["seconds"], 1e-9)
            return p["exact_val_loss"] + w * (q["exact_val_loss"] - p["exact_val_loss"])
    return points[-1]["exact_val_loss"]


def svg(results, title):
    w, h, pad = 760, 440, 60
    pts = [p for r in results for p in r["points"] if p["iter"] > 0]
    x1 = max(p["seconds"] for p in pts)
    y0, y1 = min(p["exact_val_loss"] for p in pts), max(p["exact_val_loss"] for p in pts)
    X = lambda s: pad + (w - 2 * pad) * s / x1
    Y = lambda l: h - pad - (h - 2 * pad) * (l - y0) / (y1 - y0)
    colors = {"gpt2 + AdamW": "#1f77b4", "modern + Muon": "#d62728"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w/2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="black"/>',
           f'<text x="{w/2}" y="{h-20}" text-anchor="middle">training time (s)</text>',
           f'<text x="15" y="{h/2}" transform="rotate(-90 15 {h/2})" text-anchor="middle">exact val loss</text>']
    for i in range(6):
        s, l = x1 * i / 5, y0 + (y1 - y0) * i / 5
        out.append(f'<text x="{X(s)}" y="{h-pad+16}" text-anchor="middle">{s:.0f}</text>')
        out.append(f'<text x="{pad-6}" y="{Y(l)+4}" text-anchor="end">{l:.2f}</text>')
    for recipe, color in colors.items():
        runs = [r for r in results if r["recipe"] == recipe]
        for r in runs:
            line = " ".join(f"{X(p['seconds']):.1f},{Y(p['exact_val_loss']):.1f}" for p in r["points"] if p["iter"] > 0)
            out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-opacity="0.35" stroke-width="1"/>')
        # The mean over seeds, at the first run's checkpoints.
        base = [p for p in runs[0]["points"] if p["iter"] > 0]
        mean = [(p["seconds"], statistics.mean(at_time(r["points"], p["seconds"]) for r in runs)) for p in base]
        line = " ".join(f"{X(s):.1f},{Y(l):.1f}" for s, l in mean)
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="3"/>')
    for i, (recipe, color) in enumerate(colors.items()):
        y = pad + 10 + 18 * i
        out.append(f'<line x1="{w-pad-190}" y1="{y}" x2="{w-pad-165}" y2="{y}" stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{w-pad-160}" y="{y+4}">{recipe} (thin: each seed)</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", choices=PAIRS, default="baby")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--out", default="runs/head-to-head")
    ap.add_argument("--bin", default="target/release/mlx-gpt")
    ap.add_argument("--eval_every", type=int, default=0, help="checkpoint interval for both recipes (0: the pair's own)")
    ap.add_argument("extra", nargs="*", help="--key value pairs for both recipes (e.g. --max_iters 100)")
    a = ap.parse_args()
    root = pathlib.Path(a.out) / a.pair
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in a.seeds:
        # Alternating recipes, so slow drifts of the machine's speed touch both.
        for recipe, preset, every in PAIRS[a.pair]:
            out = root / f"{preset}-seed{seed}"
            subprocess.run(["rm", "-rf", str(out)])
            extra = list(a.extra)
            every = a.eval_every or every
            run([a.bin, "train", preset, "--seed", str(seed), "--out_dir", str(out), "--eval_interval", str(every),
                 "--always_save_checkpoint", "true", "--keep_last", "1000", "--eval_full", "false", "--log_interval", "1"] + extra,
                root / f"{preset}-seed{seed}.log")
            points = curve(a.bin, preset, out, extra)
            results.append({"recipe": recipe, "preset": preset, "seed": seed, "points": points})
            last = points[-1]
            print(f"{recipe:14} seed {seed}: {last['seconds']:.0f} s, iter {last['iter']}, exact val loss "
                  f"{last['exact_val_loss']:.4f}, {last['bits_per_byte']:.4f} bits per byte", flush=True)
    (root / "results.json").write_text(json.dumps(results, indent=1))
    (root / "curves.svg").write_text(svg(results, f"{a.pair}: exact val loss against training time"))
    t = min(r["points"][-1]["seconds"] for r in results)
    print(f"\n| recipe | training time (s) | exact val loss at the end | bits per byte | exact val loss at {t:.0f} s |")
    print("|---|---|---|---|---|")
    summary = {}
    for recipe, _, _ in PAIRS[a.pair]:
        runs = [r for r in results if r["recipe"] == recipe]
        ends = [r["points"][-1] for r in runs]
        at_t = [at_time(r["points"], t) for r in runs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        summary[recipe] = at_t
        print(f"| {recipe} | {statistics.mean(e['seconds'] for e in ends):.0f} | "
              f"{statistics.mean(e['exact_val_loss'] for e in ends):.4f} ± {sd([e['exact_val_loss'] for e in ends]):.4f} | "
              f"{statistics.mean(e['bits_per_byte'] for e in ends):.4f} ± {sd([e['bits_per_byte'] for e in ends]):.4f} | "
              f"{statistics.mean(at_t):.4f} ± {sd(at_t):.4f} |")
    (g, m) = summary.values()
    gap = statistics.mean(g) - statistics.mean(m)
    worst = min(g) - max(m)
    print(f"\nat {t:.0f} s the modern recipe is lower by {gap:.4f} on average; every modern seed below every classic "
          f"one: {worst > 0} (closest pair {worst:+.4f})")


if __name__ == "__main__":
    main()
