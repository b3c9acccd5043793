"""``make bench``: run every bench script and write bench/results.md (a table) and results.json.

Run: ``.venv/bin/python bench/run_all.py [--full] [--only pipeline,loop,eval,convert,cuda,convergence]``

Each script runs in its own process (so peak-memory readings and thread settings do not leak
from one to the next) and hands back its rows as JSON. Every row compares ours with a baseline
measured in the same run on the same machine; ``ours vs baseline`` is oriented so that above 1
means ours is better (throughput: ours / baseline; time: baseline / ours). Absolute figures only
compare on the same hardware. The default sizes fit a 2-core CPU machine in under 10 minutes;
``--full`` uses full sizes (70,000-frame conversion, more images and steps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import fmt, machine  # noqa: E402

# script, default arguments, --full arguments
SCRIPTS = {
    "pipeline": ("bench_pipeline.py", ["--images", "96", "--workers", "1"], ["--images", "512", "--workers", "2"]),
    "loop": ("bench_loop.py", ["--steps", "40"], ["--steps", "120"]),
    "eval": ("bench_eval.py", ["--images", "5000"], ["--images", "5000"]),
    "convert": ("bench_convert.py", ["--frames", "20000", "--boxes", "371000", "--images", "120"],
                ["--frames", "70000", "--boxes", "1300000", "--images", "240"]),
    "cuda": ("bench_cuda.py", [], ["--steps", "60"]),
    # opt-in (--only convergence): trains the demo 2 x seeds times for 10 epochs, the two sides of a seed at the
    # same time (one core each): about 20 min (default) / 35 min (--full) on 2 cores
    "convergence": ("bench_convergence.py", ["--seeds", "3", "--parallel"], ["--seeds", "5", "--parallel"]),
}
OPT_IN = {"convergence"}
"""Scripts that run only when --only names them."""


def run_script(name: str, full: bool) -> tuple[dict, float, str]:
    script, default, full_args = SCRIPTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        start = time.perf_counter()
        env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1")
        proc = subprocess.run([sys.executable, str(HERE / script), *(full_args if full else default), "--json", str(out)],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        if proc.returncode or not out.is_file():
            return {"rows": [], "notes": [f"{name}: FAILED (exit {proc.returncode}): {tail[-600:]}"]}, wall, tail
        return json.loads(out.read_text()), wall, tail


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# hftrain benchmarks", "",
        f"Command: `{results['command']}` ({'full' if results['full'] else 'default'} sizes), "
        f"{results['started']}, {results['total_s']:.0f} s in all.", "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, GPU: {m['gpu'] or 'none'}; Python {m['python']}, torch {m['torch']}. "
        f"Load average before: {', '.join(f'{x:.2f}' for x in results['load_before'])}; "
        f"after: {', '.join(f'{x:.2f}' for x in results['load_after'])}.", "",
        "`ours vs baseline`: above 1 means ours is better (throughput: ours / baseline; time: baseline / ours). "
        "Both sides run in the same process run on the same machine; absolute figures compare only on the same hardware.",
        "", "| # | measurement | ours | baseline | unit | ours vs baseline | target | met | notes |",
        "|---|---|---:|---:|---|---:|---|---|---|",
    ]
    for r in results["rows"]:
        better = f"{r['better']:.2f}x" if r["better"] is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        lines.append(f"| {r['bench']} | {r['measure']} | {fmt(r['ours'])} | {fmt(r['baseline'])} | {r['unit']} | "
                     f"{better} | {r['target'] or '-'} | {met} | {r['note']} |")
    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in results["notes"]]
    lines += [f"- {name}: {wall:.0f} s" for name, wall in results["script_s"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full sizes (longer than 10 minutes on 2 cores)")
    parser.add_argument("--only", default=",".join(n for n in SCRIPTS if n not in OPT_IN),
                        help="comma-separated subset of " + ", ".join(SCRIPTS) + f" (opt-in: {', '.join(sorted(OPT_IN))})")
    parser.add_argument("--out", default=str(HERE), help="folder for results.md and results.json")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(SCRIPTS)}")
    results = {"command": " ".join(["python bench/run_all.py", *sys.argv[1:]]), "full": args.full,
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
               "load_before": list(os.getloadavg()), "rows": [], "notes": [], "script_s": {}}
    start = time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        got, wall, tail = run_script(name, args.full)
        print(tail, flush=True)
        results["rows"] += got["rows"]
        results["notes"] += got.get("notes", [])
        results["script_s"][name] = wall
    results["total_s"] = time.perf_counter() - start
    results["load_after"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # --out may name a folder not made yet
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 1 if any("FAILED" in n for n in results["notes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
