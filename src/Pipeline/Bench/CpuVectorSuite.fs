/// `bench --suite cpu-vector`: the CPU backend's non-GEMM kernels in each vector width this process runs
/// (256-bit "avx2" and 512-bit "avx512", Backend/Cpu/VectorWidth.cs), A/B in one process: every case runs on
/// one backend per width, the widths taking turns run by run (A, B, A, B, …, so load from other processes
/// hits both alike), and reports the fastest run of each (the record's seconds), which on a shared machine
/// estimates the unloaded time better than a median. Cases: RMSNorm, softmax, cross-entropy and KL rows
/// (forward + gradient), SwiGLU, flash attention and both gated-delta-rule forms (forward + backward, useful
/// FLOPs as in SequenceSuite), and one GEMM timed the same way (the same run's GEMM rate, for the kernels'
/// fraction of it). Other backends: no records.
module TaylorCalibrate.Pipeline.Bench.CpuVectorSuite

open System.Diagnostics
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Cpu
open TaylorCalibrate.Pipeline.Bench.BenchCore

/// A case set up on one backend: the action to time and the tensors it owns.
type private Prepared = { Run: unit -> unit; Tensors: Tensor list }

/// name, useful FLOPs (if any), tokens (rows) per run, and the setup on a backend.
type private Case = { Name: string; Flops: float option; Tokens: int option; Setup: IBackend -> Prepared }

let private random (seed: int) (n: int) (lo: float32) (hi: float32) =
    let r = System.Random seed
    Array.init n (fun _ -> lo + (hi - lo) * float32 (r.NextDouble()))

let private rmsNorm rows cols =
    { Name = $"rmsnorm fwd+bwd {rows}x{cols}"; Flops = None; Tokens = Some rows
      Setup = fun be ->
        let x = be.FromArray(random 1 (rows * cols) -2.0f 2.0f, rows, cols)
        let w = be.FromArray(random 2 cols 0.5f 1.5f, cols)
        let dy = be.FromArray(random 3 (rows * cols) -1.0f 1.0f, rows, cols)
        let y, dx = be.Allocate [| rows; cols |], be.Allocate [| rows; cols |]
        let rstd, dw = be.Allocate [| rows |], be.Allocate [| cols |]
        { Run = (fun () -> be.RmsNorm(x, w, y, rstd, 1e-5f); be.RmsNormBackward(dy, x, w, rstd, dx, dw))
          Tensors = [ x; w; dy; y; dx; rstd; dw ] } }

let private softmax rows cols =
    { Name = $"softmax fwd+bwd {rows}x{cols}"; Flops = None; Tokens = Some rows
      Setup = fun be ->
        let x = be.FromArray(random 4 (rows * cols) -8.0f 8.0f, rows, cols)
        let dy = be.FromArray(random 5 (rows * cols) -1.0f 1.0f, rows, cols)
        let y, dx = be.Allocate [| rows; cols |], be.Allocate [| rows; cols |]
        { Run = (fun () -> be.Softmax(x, y, cols); be.SoftmaxBackward(y, dy, dx, cols)); Tensors = [ x; dy; y; dx ] } }

let private crossEntropy rows vocab =
    { Name = $"cross-entropy loss+grad {rows}x{vocab}"; Flops = None; Tokens = Some rows
      Setup = fun be ->
        let z = be.FromArray(random 6 (rows * vocab) -8.0f 8.0f, rows, vocab)
        let t = be.FromInts(Array.init rows (fun i -> i * 7919 % vocab), rows)
        let loss, dz = be.Allocate [| rows |], be.Allocate [| rows; vocab |]
        { Run = (fun () -> be.CrossEntropy(z, t, loss, dz, 1.0f / float32 rows)); Tensors = [ z; t; loss; dz ] } }

let private kl rows vocab =
    { Name = $"kl loss+grad {rows}x{vocab}"; Flops = None; Tokens = Some rows
      Setup = fun be ->
        let zt = be.FromArray(random 7 (rows * vocab) -8.0f 8.0f, rows, vocab)
        let zs = be.FromArray(random 8 (rows * vocab) -8.0f 8.0f, rows, vocab)
        let loss, dz = be.Allocate [| rows |], be.Allocate [| rows; vocab |]
        { Run = (fun () -> be.KlDivergence(zt, zs, loss, dz, 1.0f / float32 rows)); Tensors = [ zt; zs; loss; dz ] } }

let private swiGlu rows cols =
    { Name = $"swiglu fwd+bwd {rows}x{cols}"; Flops = None; Tokens = Some rows
      Setup = fun be ->
        let a = be.FromArray(random 11 (rows * cols) -4.0f 4.0f, rows, cols)
        let b = be.FromArray(random 12 (rows * cols) -1.0f 1.0f, rows, cols)
        let dy = be.FromArray(random 13 (rows * cols) -1.0f 1.0f, rows, cols)
        let y, da, db = be.Allocate [| rows; cols |], be.Allocate [| rows; cols |], be.Allocate [| rows; cols |]
        { Run = (fun () -> be.SwiGlu(a, b, y); be.SwiGluBackward(a, b, dy, da, db)); Tensors = [ a; b; dy; y; da; db ] } }

let private attention t h d =
    let hkv = h / 2
    { Name = $"attention fwd+bwd T={t} H={h} Hkv={hkv} D={d}"
      Flops = Some(3.5 * 2.0 * float h * float t * float t * float d); Tokens = Some t
      Setup = fun be ->
        let q = be.FromArray(random 1 (t * h * d) -1.0f 1.0f, 1, t, h, d)
        let k = be.FromArray(random 2 (t * hkv * d) -1.0f 1.0f, 1, t, hkv, d)
        let v = be.FromArray(random 3 (t * hkv * d) -1.0f 1.0f, 1, t, hkv, d)
        let dO = be.FromArray(random 4 (t * h * d) -1.0f 1.0f, 1, t, h, d)
        let o, lse = be.Allocate [| 1; t; h; d |], be.Allocate [| 1; h; t |]
        let dq, dk, dv = be.Allocate q.Shape, be.Allocate k.Shape, be.Allocate v.Shape
        let scale = 1.0f / sqrt (float32 d)
        { Run = (fun () ->
            be.AttentionForward(q, k, v, o, lse, scale)
            be.AttentionBackward(q, k, v, o, lse, dO, dq, dk, dv, scale))
          Tensors = [ q; k; v; dO; o; lse; dq; dk; dv ] } }

let private gdn (mode: GdnMode) t h d =
    let form = if mode = GdnMode.Chunked then "chunked" else "recurrent"
    let backFactor = if mode = GdnMode.Recurrent then 2.0 else 2.5
    { Name = $"gdn {form} fwd+bwd T={t} H={h} K=V={d}"
      Flops = Some((1.0 + backFactor) * SequenceSuite.gdnForwardFlops mode 64 t h d); Tokens = Some t
      Setup = fun be ->
        let n, ng = t * h * d, t * h
        let q = be.FromArray(random 1 n -1.0f 1.0f, 1, t, h, d)
        let k = be.FromArray(random 2 n -1.0f 1.0f, 1, t, h, d)
        let v = be.FromArray(random 3 n -1.0f 1.0f, 1, t, h, d)
        let g = be.FromArray(random 4 ng -0.2f -1e-4f, 1, t, h)
        let beta = be.FromArray(random 5 ng 0.05f 0.95f, 1, t, h)
        let dO = be.FromArray(random 6 n -1.0f 1.0f, 1, t, h, d)
        let o, dq, dk, dv = be.Allocate q.Shape, be.Allocate q.Shape, be.Allocate q.Shape, be.Allocate q.Shape
        let dg, db = be.Allocate g.Shape, be.Allocate g.Shape
        let spec = GdnSpec(1.0f / sqrt (float32 d), true, mode, 64)
        { Run = (fun () ->
            be.GdnForward(q, k, v, g, beta, null, o, null, spec)
            be.GdnBackward(q, k, v, g, beta, null, dO, null, dq, dk, dv, dg, db, null, spec))
          Tensors = [ q; k; v; g; beta; dO; o; dq; dk; dv; dg; db ] } }

let private cases quick =
    if quick then
        [ rmsNorm 256 512; softmax 256 512; crossEntropy 64 4096; kl 64 4096; swiGlu 256 512
          attention 256 4 64; gdn GdnMode.Chunked 256 4 64; gdn GdnMode.Recurrent 256 4 64 ]
    else
        [ rmsNorm 4096 2048; softmax 2048 2048; crossEntropy 512 32000; kl 512 32000; swiGlu 2048 2816
          for h, d in [ (8, 64); (16, 128) ] do
              attention 2048 h d
              gdn GdnMode.Chunked 2048 h d
              gdn GdnMode.Recurrent 2048 h d ]

let private record (c: Case) (width: CpuVectorWidth) seconds =
    { Suite = "cpu-vector"; Device = "cpu"; Case = $"{c.Name} [{CpuVectorWidths.Name width}]"; M = None; N = None; K = None
      Seconds = seconds; Gflops = c.Flops |> Option.map (fun f -> f / seconds / 1e9)
      TokensPerSecond = c.Tokens |> Option.map (fun t -> float t / seconds) }

/// The fastest run of each prepared case, the cases taking turns run by run (after `opts.Warmup` runs each),
/// for at least `opts.MinRepeats` turns and `opts.MinSeconds` per case, at most `opts.MaxRepeats` turns.
let private fastest (opts: BenchOptions) (runs: (IBackend * Prepared) list) =
    let best = Array.create runs.Length infinity
    for _, p in runs do
        for _ in 1 .. opts.Warmup do p.Run()
    let clock = Stopwatch.StartNew()
    let mutable turns = 0
    while turns < opts.MinRepeats || (clock.Elapsed.TotalSeconds < opts.MinSeconds * float runs.Length && turns < opts.MaxRepeats) do
        runs |> List.iteri (fun i (b, p) ->
            let sw = Stopwatch.StartNew()
            p.Run()
            b.Synchronize()
            best[i] <- min best[i] sw.Elapsed.TotalSeconds)
        turns <- turns + 1
    best

/// Every case in every width, then the GEMM rate of the same run (timed the same way); nothing on other backends.
let run (be: IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    match be with
    | :? CpuBackend as cpu ->
        let backends = [ for w in CpuVectorWidths.Supported -> w, new CpuBackend(cpu.Threads, w) ]
        try
            [ for c in cases opts.Quick do
                let prepared = [ for w, b in backends -> w, b, c.Setup b ]
                let best = fastest opts [ for _, b, p in prepared -> (b :> IBackend), p ]
                for i, (w, _, p) in List.indexed prepared do
                    for t in p.Tensors do t.Dispose()
                    let r = record c w best[i]
                    report r
                    yield r
              let n = if opts.Quick then 256 else 1024
              let rnd = System.Random 1234
              let fill count = Array.init count (fun _ -> float32 (rnd.NextDouble() - 0.5))
              let a, b, cT = be.FromArray(fill (n * n), n, n), be.FromArray(fill (n * n), n, n), be.Allocate [| n; n |]
              let spec = GemmSpec(n, n, n)
              let seconds = (fastest opts [ be, { Run = (fun () -> be.Gemm(a, b, cT, spec)); Tensors = [ a; b; cT ] } ])[0]
              for t in [ a; b; cT ] do t.Dispose()
              let r = { Suite = "cpu-vector"; Device = "cpu"; Case = $"gemm square {n}"; M = Some n; N = Some n; K = Some n
                        Seconds = seconds; Gflops = Some(spec.Flops / seconds / 1e9); TokensPerSecond = None }
              report r
              yield r ]
        finally
            for _, b in backends do b.Dispose()
    | _ -> []
