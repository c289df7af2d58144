/// The benchmark suites by name, for `taylor-calibrate bench --suite NAME` and for scripts.
module TaylorCalibrate.Pipeline.Bench.Suites

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Bench.BenchCore

/// name, what it measures, runner (reports each record as it completes).
let all: (string * string * (IBackend -> BenchOptions -> (BenchRecord -> unit) -> BenchRecord list)) list =
    [ "gemm", "fp32 GEMM GFLOP/s: square 256–2048 and LLM-layer shapes", GemmSuite.run ]

let names = all |> List.map (fun (n, _, _) -> n)

let tryFind (name: string) = all |> List.tryFind (fun (n, _, _) -> n = name)
