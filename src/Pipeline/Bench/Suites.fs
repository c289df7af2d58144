/// The benchmark suites by name, for `taylor-calibrate bench --suite NAME` and for scripts.
module TaylorCalibrate.Pipeline.Bench.Suites

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Bench.BenchCore

/// name, what it measures, runner (reports each record as it completes).
let all: (string * string * (IBackend -> BenchOptions -> (BenchRecord -> unit) -> BenchRecord list)) list =
    [ "gemm", "fp32 GEMM GFLOP/s: square 256–2048 and LLM-layer shapes", GemmSuite.run
      "attention", "causal GQA softmax attention tokens/s, forward and forward+backward, T 512–8192", SequenceSuite.runAttention
      "gdn", "gated delta rule tokens/s, chunked vs recurrent, forward and forward+backward, T 512–8192", SequenceSuite.runGdn
      "cpu-vector", "CPU only: row kernels, AdamW, attention and GDN in 256- and 512-bit vectors, A/B in one process, and the same run's GEMM rate", CpuVectorSuite.run
      "teacher", "teacher forward tokens/s: stories260K shape and a 4-layer D256 Llama (random weights)", TeacherSuite.run
      "align", "seconds per Phase-2 alignment step of a D=1024, 16x64-head GDN layer on 4x256 tokens", AlignSuite.run
      "train", "training tokens/s and model FLOP rate (4-layer D256 GQA Llama, B=8 T=256 on the CPU; a small model elsewhere), with and without recompute", TrainSuite.run
      "distill", "Stage-1 and Stage-2 step tokens/s and model FLOP rate of a keep-[0] hybrid (stories260K shape and a 4-layer D256 Llama on the CPU; the small one elsewhere), beside the GEMM rate", DistillSuite.run
      "gpu-shapes", "fp32 GEMM GFLOP/s at GPU sizes: 4096³ and an 8192-token 4096->4096 projection", GpuShapesSuite.run ]

let names = all |> List.map (fun (n, _, _) -> n)

let tryFind (name: string) = all |> List.tryFind (fun (n, _, _) -> n = name)
