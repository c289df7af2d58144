/// `bench --suite gpu-shapes`: fp32 GEMM at the sizes that fill a discrete GPU (4096³ and an 8192-token
/// 4096→4096 projection), for the GPU check (tools/gpu-check.sh), which compares the GFLOP/s with the device's
/// fp32 peak. The attention and GDN suites already cover T = 8192, H = 16, head 128. `--quick` shrinks the
/// cases to 512 so that the same script runs end to end on a CPU-type driver (lavapipe).
module TaylorCalibrate.Pipeline.Bench.GpuShapesSuite

open TaylorCalibrate.Pipeline.Bench.BenchCore
open TaylorCalibrate.Pipeline.Bench.GemmSuite

/// The cases; the first is the square product the GPU check reports against the fp32 peak.
let cases (quick: bool) =
    let n, tokens = if quick then 512, 1024 else 4096, 8192
    [ { Name = $"square {n}"; M = n; N = n; K = n; TransA = false; TransB = false }
      { Name = $"proj {tokens} tok, {n}->{n} (x·Wᵀ)"; M = tokens; N = n; K = n; TransA = false; TransB = true } ]

/// Every case, reporting each record as it completes.
let run (be: TaylorCalibrate.Backend.IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    [ for c in cases opts.Quick do
        let r = { runCase be opts c with Suite = "gpu-shapes" }
        report r
        r ]
