#!/usr/bin/env python3
"""Compares the CPU backend's fp32 GEMM with NumPy on OpenBLAS, on the same shapes, in one run.

Each round runs `taylor-calibrate bench --suite gemm --device cpu --json FILE`, then a NumPy worker process on
every shape of that file (same timing rule as the bench: one warm-up, then the median of at least 3 runs and
at least --min-seconds). The rounds alternate the two so that load from other processes hits both alike;
the report keeps each side's best round and prints ours / NumPy per shape, with the load average before and
after. The NumPy process runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its environment, so
OpenBLAS picks its kernels for this processor (a machine-wide override would otherwise pin an older core
type); the CLI keeps the environment as it is. --numpy-coretype NAME instead sets OPENBLAS_CORETYPE=NAME for
the NumPy process only, for like-for-like comparisons of narrower kernels on a wide machine: `--kernel avx2
--numpy-coretype Haswell` compares our AVX2 kernel with OpenBLAS's AVX2 (Haswell/Zen) kernels, as on an
AVX2-only processor. The report names the core type OpenBLAS ran (openblas_get_corename).

usage: tools/bench-vs-numpy.py [--cli DLL] [--rounds N] [--threads N] [--kernel avx512|avx2|vector|scalar]
                               [--numpy-coretype NAME] [--min-seconds S] [--quick] [--json OUT]
Needs python3-numpy and libopenblas0-pthread (Debian); prints a warning when NumPy is not on OpenBLAS.
--threads N limits both sides (DOTNET_PROCESSOR_COUNT for .NET, OPENBLAS_NUM_THREADS for NumPy).
"""
import argparse, json, os, subprocess, sys, tempfile

PYTHON = "/usr/bin/python3"     # Debian's python3-numpy lives there, whatever python3 is first on PATH

# The NumPy side: reads [{case, m, n, k, trans_a, trans_b}] on stdin, prints [{case, seconds, blas}] on stdout.
WORKER = r"""
import json, sys, time
import numpy as np
cases, min_seconds = json.load(sys.stdin)
rng = np.random.default_rng(1234)
try:
    cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
except Exception:
    import io, contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): np.show_config()
    cfg = "openblas" if "openblas" in buf.getvalue().lower() else "unknown"
core = "unknown"                          # the kernels OpenBLAS chose at load time
try:
    import ctypes
    for line in open("/proc/self/maps"):
        if "openblas" in line.lower() and ".so" in line:
            f = ctypes.CDLL(line.split()[-1]).openblas_get_corename
            f.restype = ctypes.c_char_p
            core = f().decode()
            break
except Exception:
    pass
out = []
for c in cases:
    m, n, k = c["m"], c["n"], c["k"]
    a = (rng.random((k, m) if c["trans_a"] else (m, k), dtype=np.float32) - 0.5)
    b = (rng.random((n, k) if c["trans_b"] else (k, n), dtype=np.float32) - 0.5)
    opa = a.T if c["trans_a"] else a        # a transposed view: OpenBLAS gets the transpose flag, no copy
    opb = b.T if c["trans_b"] else b
    dst = np.empty((m, n), dtype=np.float32)
    np.matmul(opa, opb, out=dst)            # warm-up
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < 25):
        t = time.perf_counter(); np.matmul(opa, opb, out=dst); times.append(time.perf_counter() - t)
    times.sort()
    mid = len(times) // 2
    med = times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid])
    out.append({"case": c["case"], "seconds": med, "blas": cfg, "core": core})
json.dump(out, sys.stdout)
"""

def transposes(case_name):
    """The gemm suite writes the product in its case name: "(x·Wᵀ)" transposes B, "(dYᵀ·X)" transposes A."""
    product = case_name[case_name.rfind("("):] if "(" in case_name else ""
    left, _, right = product.partition("·")
    return "ᵀ" in left, "ᵀ" in right

def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])

def run_ours(cli, env, min_seconds, quick, workdir):
    path = os.path.join(workdir, "ours.json")
    cmd = ["dotnet", cli, "bench", "--suite", "gemm", "--device", "cpu", "--json", path, "--min-seconds", str(min_seconds)]
    if quick: cmd.append("--quick")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench-vs-numpy: `{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    with open(path) as f:
        return json.load(f)

def run_numpy(cases, env, min_seconds):
    r = subprocess.run([PYTHON, "-c", WORKER], input=json.dumps([cases, min_seconds]), env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench-vs-numpy: the NumPy worker failed ({r.returncode}): {r.stderr.strip()} "
                 "(on Debian: apt-get install python3-numpy libopenblas0-pthread)")
    return json.loads(r.stdout)

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cli", default=os.path.join(here, "..", "src", "Cli", "bin", "Release", "net10.0", "taylor-calibrate.dll"),
                   help="taylor-calibrate.dll (default: the Release build of this checkout)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; each side keeps its best (default 3)")
    p.add_argument("--threads", type=int, default=0, help="threads for both sides (default: all cores)")
    p.add_argument("--kernel", default="", help="force the CPU GEMM kernel (sets TC_CPU_GEMM)")
    p.add_argument("--numpy-coretype", default="",
                   help="set OPENBLAS_CORETYPE for the NumPy process only (e.g. Haswell: OpenBLAS's AVX2 kernels)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="time per shape and round (default 1)")
    p.add_argument("--quick", action="store_true", help="the gemm suite's quick shapes")
    p.add_argument("--json", help="also write the comparison as a JSON list to this file")
    args = p.parse_args()
    if not os.path.isfile(args.cli):
        sys.exit(f"bench-vs-numpy: --cli {args.cli}: no such file (build with `dotnet build src/Cli -c Release`)")
    if args.rounds < 1:
        sys.exit(f"bench-vs-numpy: --rounds {args.rounds}: expected at least 1")

    ours_env = dict(os.environ)
    np_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    if args.threads > 0:
        ours_env["DOTNET_PROCESSOR_COUNT"] = str(args.threads)
        np_env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    if args.kernel:
        ours_env["TC_CPU_GEMM"] = args.kernel
    if args.numpy_coretype:
        np_env["OPENBLAS_CORETYPE"] = args.numpy_coretype

    load_before = load_average()
    best_ours, best_np, blas, core = {}, {}, "unknown", "unknown"
    with tempfile.TemporaryDirectory(prefix="bench-vs-numpy-") as workdir:
        for rnd in range(args.rounds):
            ours = run_ours(args.cli, ours_env, args.min_seconds, args.quick, workdir)
            cases = []
            for r in ours:
                ta, tb = transposes(r["case"])
                cases.append({"case": r["case"], "m": r["m"], "n": r["n"], "k": r["k"], "trans_a": ta, "trans_b": tb})
                prev = best_ours.get(r["case"])
                if prev is None or r["seconds"] < prev["seconds"]:
                    best_ours[r["case"]] = r
            for r in run_numpy(cases, np_env, args.min_seconds):
                blas, core = r["blas"], r.get("core", "unknown")
                if r["case"] not in best_np or r["seconds"] < best_np[r["case"]]:
                    best_np[r["case"]] = r["seconds"]
            print(f"round {rnd + 1}/{args.rounds} done (load average {load_average()})", file=sys.stderr)
    load_after = load_average()

    if "openblas" not in str(blas).lower():
        print(f"warning: NumPy uses '{blas}', not OpenBLAS", file=sys.stderr)
    rows = []
    for name, r in best_ours.items():
        flops = 2.0 * r["m"] * r["n"] * r["k"]
        ours_gf, np_gf = flops / r["seconds"] / 1e9, flops / best_np[name] / 1e9
        rows.append({"case": name, "m": r["m"], "n": r["n"], "k": r["k"], "ours_gflops": round(ours_gf, 2),
                     "numpy_gflops": round(np_gf, 2), "ratio": round(ours_gf / np_gf, 3)})
    threads = args.threads or os.cpu_count()
    print(f"CPU GEMM vs NumPy/{blas} ({core} kernels): best of {args.rounds} rounds, {threads} threads, "
          f"kernel {args.kernel or 'auto'}; load average {load_before} before, {load_after} after")
    print(f"{'case':48} {'m x n x k':>18} {'ours GFLOP/s':>13} {'numpy GFLOP/s':>14} {'ours/numpy':>11}")
    for r in rows:
        size = f"{r['m']}x{r['n']}x{r['k']}"
        print(f"{r['case']:48} {size:>18} {r['ours_gflops']:13.1f} {r['numpy_gflops']:14.1f} {r['ratio']:11.2f}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"threads": threads, "kernel": args.kernel or "auto", "rounds": args.rounds, "blas": blas,
                       "numpy_coretype": args.numpy_coretype or None, "openblas_core": core,
                       "load_before": load_before, "load_after": load_after, "cases": rows}, f, indent=2)
        os.replace(tmp, args.json)

if __name__ == "__main__":
    main()
