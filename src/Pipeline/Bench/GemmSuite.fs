/// `bench --suite gemm`: fp32 GEMM GFLOP/s on square sizes and on the shapes an LLM layer produces
/// (projections x·Wᵀ, MLP up/down, a weight gradient dW = dYᵀ·X with a long reduction, the lm_head).
module TaylorCalibrate.Pipeline.Bench.GemmSuite

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Bench.BenchCore

/// A GEMM case: name, M, N, K and transposes (weights stored [out,in] give TransB for x·Wᵀ).
type GemmCase = { Name: string; M: int; N: int; K: int; TransA: bool; TransB: bool }

let private square n = { Name = $"square {n}"; M = n; N = n; K = n; TransA = false; TransB = false }

/// The cases; `quick` keeps sizes a CPU-type Vulkan driver finishes in seconds.
let cases (quick: bool) =
    if quick then
        [ square 128; square 256; square 512
          { Name = "proj 256 tok x 512->512 (x·Wᵀ)"; M = 256; N = 512; K = 512; TransA = false; TransB = true } ]
    else
        [ square 256; square 512; square 1024; square 2048
          { Name = "attn proj 512 tok, 2048->2048 (x·Wᵀ)"; M = 512; N = 2048; K = 2048; TransA = false; TransB = true }
          { Name = "mlp up 512 tok, 2048->5632 (x·Wᵀ)"; M = 512; N = 5632; K = 2048; TransA = false; TransB = true }
          { Name = "mlp down 512 tok, 5632->2048 (x·Wᵀ)"; M = 512; N = 2048; K = 5632; TransA = false; TransB = true }
          { Name = "weight grad 2048x2048 over 4096 tok (dYᵀ·X)"; M = 2048; N = 2048; K = 4096; TransA = true; TransB = false }
          { Name = "lm head 256 tok, 2048->32000 (x·Wᵀ)"; M = 256; N = 32000; K = 2048; TransA = false; TransB = true } ]

/// Runs one case on `be` with seeded inputs.
let runCase (be: IBackend) (opts: BenchOptions) (c: GemmCase) =
    let rnd = System.Random 1234
    let fill n = Array.init n (fun _ -> float32 (rnd.NextDouble() - 0.5))
    let aShape = if c.TransA then [| c.K; c.M |] else [| c.M; c.K |]
    let bShape = if c.TransB then [| c.N; c.K |] else [| c.K; c.N |]
    use a = be.FromArray(fill (c.M * c.K), aShape)
    use b = be.FromArray(fill (c.K * c.N), bShape)
    use cT = be.Allocate [| c.M; c.N |]
    let spec = GemmSpec(c.M, c.N, c.K, c.TransA, c.TransB)
    let seconds = measure be opts (fun () -> be.Gemm(a, b, cT, spec))
    { Suite = "gemm"; Device = be.Name; Case = c.Name; M = Some c.M; N = Some c.N; K = Some c.K
      Seconds = seconds; Gflops = Some(spec.Flops / seconds / 1e9); TokensPerSecond = None }

/// Every case, reporting each record as it completes.
let run (be: IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    [ for c in cases opts.Quick do
        let r = runCase be opts c
        report r
        r ]
