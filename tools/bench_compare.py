"""candle (`multimix bench`) against PyTorch + timm (`tools/bench_torch.py`) in one run.

For each of R rounds and each configuration (model x method), one fresh PyTorch process, then
one fresh candle process, so machine noise hits both alike (torch -> candle -> torch -> candle
...). Prints one markdown table: per framework the median over rounds of the per-process
median step time with its range, and the candle/PyTorch ratio (median and range of the
per-round ratios), plus each method's cost relative to ERM (`none`) in the same framework.
Every process's JSON and the table are kept under --out.

    python3 tools/bench_compare.py                      # the issue #8 matrix, 3 rounds
    python3 tools/bench_compare.py --model vit_tiny_patch4_32 --method none,multimix --rounds 5
    python3 tools/bench_compare.py --fgsm --model resnet18_cifar
    python3 tools/bench_compare.py --python /path/to/venv/bin/python --steps 1 --warmup 0 \
        --batch-size 8 --rounds 1                        # a smoke test

Runs from any Python 3 (the standard library only); the PyTorch side runs in --python
(default: $MULTIMIX_PYREF, else /work/pyref/bin/python). The candle binary is built once with
`cargo build --release` unless --multimix names one.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = "vit_mini_patch7_28,vit_tiny_patch4_32,resnet18_cifar"
METHODS = "none,mixup,manifold-mixup,multimix,dense-multimix"


def run(cmd, out_json):
    """Run one benchmark process; its JSON record (one configuration)."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"error: `{' '.join(cmd)}` failed ({done.returncode}): "
                 f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    results = json.loads(Path(out_json).read_text())
    (record,) = results["results"]
    return results, record


def spread(values, fmt):
    """`median (min–max)` of values."""
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def table(configs, rec, rounds, fgsm):
    """The markdown table of all configurations."""
    s3 = lambda v: f"{v:.3f}"  # noqa: E731
    s2 = lambda v: f"{v:.2f}"  # noqa: E731
    s0 = lambda v: f"{v:.0f}"  # noqa: E731
    head = ("| model | method | PyTorch s | candle s | candle / PyTorch | "
            + ("" if fgsm else "PyTorch × ERM | candle × ERM | ")
            + "img/s PyTorch / candle | GFLOP/s PyTorch / candle | "
            "peak RSS MiB (+ over the start) PyTorch / candle | CPU s PyTorch / candle |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, method in configs:
        t = [rec[("pytorch", model, method, r)] for r in range(rounds)]
        c = [rec[("candle", model, method, r)] for r in range(rounds)]
        med = lambda rs, k: statistics.median(x[k] for x in rs)  # noqa: E731
        ratio = [cr["median_s"] / tr["median_s"] for cr, tr in zip(c, t)]
        row = [model, method or "fgsm", spread([x["median_s"] for x in t], s3),
               spread([x["median_s"] for x in c], s3), spread(ratio, s2)]
        if not fgsm:
            for fw in ("pytorch", "candle"):
                erm = [rec.get((fw, model, "none", r)) for r in range(rounds)]
                mine = [rec[(fw, model, method, r)] for r in range(rounds)]
                row.append(spread([m["median_s"] / e["median_s"] for m, e in zip(mine, erm)], s2)
                           if all(erm) else "-")
        row.append(f"{med(t, 'images_per_s'):.1f} / {med(c, 'images_per_s'):.1f}")
        gf = [med(rs, "achieved_gflops") if all(x["achieved_gflops"] for x in rs) else None
              for rs in (t, c)]
        row.append(" / ".join("-" if g is None else f"{g:.1f}" for g in gf))
        row.append(" / ".join(
            f"{s0(med(rs, 'peak_rss_bytes') / 2**20)} "
            f"(+{s0(med(rs, 'peak_rss_bytes') / 2**20 - med(rs, 'rss_start_bytes') / 2**20)})"
            for rs in (t, c)))
        row.append(f"{s3(med(t, 'cpu_median_s'))} / {s3(med(c, 'cpu_median_s'))}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=MODELS, help=f"comma-separated (default {MODELS})")
    p.add_argument("--method", default=None, help=f"comma-separated (default {METHODS})")
    p.add_argument("--fgsm", action="store_true", help="time FGSM batches instead")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--opt", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--python", default=os.environ.get("MULTIMIX_PYREF", "/work/pyref/bin/python"),
                   help="the Python with torch and timm")
    p.add_argument("--multimix", help="a built multimix binary (default: cargo build --release)")
    p.add_argument("--out", help="directory for the JSON files and table.md "
                                 "(default target/bench-results/<UTC time>)")
    args = p.parse_args()
    if args.fgsm and args.method:
        sys.exit("error: --method does not apply to --fgsm")
    if args.rounds < 1:
        sys.exit("error: --rounds must be at least 1")
    out = Path(args.out or ROOT / "target" / "bench-results" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    out.mkdir(parents=True, exist_ok=True)
    binary = args.multimix
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        binary = str(ROOT / "target" / "release" / "multimix")
    models = args.model.split(",")
    methods = [None] if args.fgsm else (args.method or METHODS).split(",")
    configs = [(m, x) for m in models for x in methods]
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
              str(args.batch_size), "--threads", str(args.threads)]
    rec, headers = {}, {}
    for r in range(args.rounds):
        for model, method in configs:
            what = ["--model", model] + (["--fgsm"] if method is None else
                                         ["--method", method, "--opt", args.opt])
            for fw, cmd in (("pytorch", [args.python, "tools/bench_torch.py"]),
                            ("candle", [binary, "bench"])):
                path = out / f"{fw}-{model}-{method or 'fgsm'}-r{r}.json"
                headers[fw], rec[(fw, model, method, r)] = run(
                    cmd + what + common + ["--json", str(path)], path)
    text = table(configs, rec, args.rounds, args.fgsm)
    for model, method in configs:
        pt, ca = (rec[(fw, model, method, 0)]["params"] for fw in ("pytorch", "candle"))
        if pt != ca:
            text += f"\n\nwarning: {model} has {pt} parameters in PyTorch, {ca} in candle"
    machine = headers["candle"]["machine"]
    note = (f"{args.rounds} rounds, batch {args.batch_size}, {args.threads} threads, "
            f"{args.steps} timed steps after {args.warmup} warm-ups per process; "
            f"{headers['pytorch']['framework_version']} vs {headers['candle']['framework_version']}; "
            f"CPU: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
            f"{machine['clock_mhz']} MHz reported, assumed peak "
            f"{machine['peak_gflops'] or 0:.0f} GFLOP/s")
    tmp = out / "table.md.tmp"
    tmp.write_text(note + "\n\n" + text + "\n")
    os.replace(tmp, out / "table.md")
    print(note + "\n\n" + text)
    print(f"\n(raw JSON and table.md in {out})", file=sys.stderr)


if __name__ == "__main__":
    main()
