/// Causal GQA softmax attention (docs/kernels.md §2) against the explicit double-precision softmax
/// (Reference/AttentionReference.fs): o, lse, the fused per-head statistics, probs, and dq/dk/dv, at odd T
/// (partial and single tiles), head sizes that are not powers of two and GQA ratios 1, 2, 4; the
/// reference's gradients are checked by central finite differences.
module TaylorCalibrate.Tests.Ops.AttentionTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests

module Ref = TaylorCalibrate.Tests.AttentionReference

// Backends under test (Vulkan: lavapipe unless TC_TEST_VULKAN names a device).
let backends = Backends.all

/// Tolerances: relative RMS error against the double reference (fp32 kernels). Softmax in fp32 is
/// accurate to a few ulp per probability (the max shift keeps every exponent ≤ 0), and each output is a
/// length-T, length-D fp32 sum, so errors stay near 1e-6.
/// Observed maxima over this suite (CPU, TC_PRINT_ERRORS=1): o 2.7e-7, lse 4.4e-8, stats 4.8e-8,
/// probs 2e-7, dq/dk/dv ≤ 4.4e-7. The limits keep ≥ 10× headroom; fla's fp16 test allows 5e-3.
module Tol =
    /// o, lse, probs and the statistics.
    let output = 5e-6
    /// dq, dk, dv: δ = dO·O and dS = P(dP − δ) cancel a little more.
    let grad = 1e-5
    /// Pass outright when every |Δ| is below this.
    let absFloor = 1e-6
    /// Finite-difference check of the double reference (central differences, step 1e-5).
    let finiteDifference = 1e-6

let printErrors = Environment.GetEnvironmentVariable "TC_PRINT_ERRORS" = "1"

type Case =
    { B: int; T: int; H: int; Hkv: int; D: int; Seed: int }
    override c.ToString() = $"B={c.B} T={c.T} H={c.H} Hkv={c.Hkv} D={c.D}"

type Data = { Q: float32[]; K: float32[]; V: float32[]; DO: float32[] }

let makeData (c: Case) =
    let s = c.Seed * 100
    { Q = Rand.normal (s + 1) 1.0 (c.B * c.T * c.H * c.D)
      K = Rand.normal (s + 2) 1.0 (c.B * c.T * c.Hkv * c.D)
      V = Rand.normal (s + 3) 1.0 (c.B * c.T * c.Hkv * c.D)
      DO = Rand.normal (s + 4) 1.0 (c.B * c.T * c.H * c.D) }

let scaleOf (c: Case) = 1.0 / sqrt (float c.D)

let refInputs (c: Case) (d: Data) : Ref.Inputs =
    { B = c.B; T = c.T; H = c.H; Hkv = c.Hkv; D = c.D
      Q = Array.map float d.Q; K = Array.map float d.K; V = Array.map float d.V
      Scale = scaleOf c }

type Result =
    { O: float32[]; Lse: float32[]; Stats: float32[]; Probs: float32[] option
      DQ: float32[]; DK: float32[]; DV: float32[] }

let run (be: IBackend) (c: Case) (d: Data) (withProbs: bool) : Result =
    let qShape, kShape = [| c.B; c.T; c.H; c.D |], [| c.B; c.T; c.Hkv; c.D |]
    use q = be.FromArray(d.Q, qShape)
    use k = be.FromArray(d.K, kShape)
    use v = be.FromArray(d.V, kShape)
    use o = be.Allocate qShape
    use lse = be.Allocate [| c.B; c.H; c.T |]
    use stats = be.Allocate [| c.B; c.H; 2 |]
    use probs = be.Allocate(if withProbs then [| c.B; c.H; c.T; c.T |] else [| 1 |])
    use dO = be.FromArray(d.DO, qShape)
    use dq = be.Allocate qShape
    use dk = be.Allocate kShape
    use dv = be.Allocate kShape
    let scale = float32 (scaleOf c)
    be.AttentionForward(q, k, v, o, lse, scale, stats, (if withProbs then probs else null))
    be.AttentionBackward(q, k, v, o, lse, dO, dq, dk, dv, scale)
    { O = o.ToArray(); Lse = lse.ToArray(); Stats = stats.ToArray()
      Probs = (if withProbs then Some(probs.ToArray()) else None)
      DQ = dq.ToArray(); DK = dk.ToArray(); DV = dv.ToArray() }

let close tol (exp: float[]) (act: float32[]) (name: string) =
    if printErrors then eprintfn "error %s %.2e" name (Numeric.relRms exp act)
    Numeric.close tol Tol.absFloor exp act name

let cases =
    [ { B = 2; T = 1; H = 2; Hkv = 1; D = 8; Seed = 1 }
      { B = 1; T = 63; H = 4; Hkv = 2; D = 60; Seed = 2 }
      { B = 2; T = 64; H = 2; Hkv = 2; D = 64; Seed = 3 }
      { B = 1; T = 65; H = 4; Hkv = 1; D = 100; Seed = 4 }
      { B = 1; T = 75; H = 2; Hkv = 1; D = 128; Seed = 5 }
      { B = 1; T = 300; H = 4; Hkv = 2; D = 64; Seed = 6 }
      { B = 1; T = 130; H = 4; Hkv = 4; D = 8; Seed = 7 } ]

let finiteDifferences =
    test "reference gradients match central finite differences" {
        let c = { B = 1; T = 5; H = 2; Hkv = 1; D = 3; Seed = 9 }
        let d = makeData c
        let x = refInputs c d
        let dO = Array.map float d.DO
        let grads = Ref.backward x dO
        let eps = 1e-5
        let numeric (get: Ref.Inputs -> float[]) (set: Ref.Inputs -> float[] -> Ref.Inputs) =
            let a = get x
            Array.init a.Length (fun i ->
                let at delta =
                    let a2 = Array.copy a
                    a2[i] <- a2[i] + delta
                    Ref.loss (set x a2) dO
                (at eps - at -eps) / (2.0 * eps))
        let check name (analytic: float[]) (num: float[]) =
            let diff = Array.map2 (fun (a: float) b -> (a - b) * (a - b)) analytic num |> Array.sum
            let rel = sqrt (diff / max (Array.sumBy (fun b -> b * b) num) 1e-300)
            Expect.isLessThan rel Tol.finiteDifference $"{name}: relative RMS error of the analytic gradient"
        check "dq" grads.DQ (numeric (fun x -> x.Q) (fun x a -> { x with Q = a }))
        check "dk" grads.DK (numeric (fun x -> x.K) (fun x a -> { x with K = a }))
        check "dv" grads.DV (numeric (fun x -> x.V) (fun x a -> { x with V = a }))
    }

[<Tests>]
let tests =
    testList "Attention" [
        finiteDifferences
        for h in backends do
            for c in cases do
                test $"{h.Name} forward, statistics and backward vs reference: {c}" {
                    let be = h.Get()
                    let d = makeData c
                    let x = refInputs c d
                    let withProbs = c.T <= 130
                    let r = run be c d withProbs
                    let e = Ref.forward x
                    let g = Ref.backward x (Array.map float d.DO)
                    close Tol.output e.O r.O "o"
                    close Tol.output e.Lse r.Lse "lse"
                    close Tol.output e.Stats r.Stats "stats"
                    r.Probs |> Option.iter (fun p -> close Tol.output e.Probs p "probs")
                    close Tol.grad g.DQ r.DQ "dq"
                    close Tol.grad g.DK r.DK "dk"
                    close Tol.grad g.DV r.DV "dv"
                }
            test $"{h.Name} statistics of a uniform row: distance and entropy in closed form" {
                // q = 0 gives s = 0, so row i attends uniformly to its i+1 keys: Σ_j D_ij/(i+1) and ln(i+1)
                let be = h.Get()
                let T = 70
                use q = be.Allocate [| 1; T; 1; 4 |]
                use k = be.FromArray(Rand.normal 5 1.0 (T * 4), 1, T, 1, 4)
                use v = be.FromArray(Rand.normal 6 1.0 (T * 4), 1, T, 1, 4)
                use o = be.Allocate [| 1; T; 1; 4 |]
                use lse = be.Allocate [| 1; 1; T |]
                use stats = be.Allocate [| 1; 1; 2 |]
                be.AttentionForward(q, k, v, o, lse, 0.5f, stats, null)
                let dist = [ for i in 0 .. T - 1 -> (0.5 + float (i * (i + 1) / 2)) / float (i + 1) ] |> List.average
                let ent = [ for i in 0 .. T - 1 -> log (float (i + 1)) ] |> List.average
                close Tol.output [| dist; ent |] (stats.ToArray()) "stats"
            }
            test $"{h.Name} rejects bad arguments with the tensor's name" {
                let be = h.Get()
                use q = be.Allocate [| 1; 4; 3; 8 |]
                use k = be.Allocate [| 1; 4; 2; 8 |]
                use kOk = be.Allocate [| 1; 4; 1; 8 |]
                use vBad = be.Allocate [| 1; 4; 1; 6 |]
                use o = be.Allocate [| 1; 4; 3; 8 |]
                use lse = be.Allocate [| 1; 3; 4 |]
                use lseBad = be.Allocate [| 1; 4; 3 |]
                let throwsNaming (name: string) (f: unit -> unit) =
                    let ex = Expect.throwsC f id
                    Expect.isTrue (ex :? ArgumentException) $"{name}: ArgumentException, got {ex.GetType().Name}"
                    Expect.stringContains ex.Message $"'{name}'" "message names the tensor"
                throwsNaming "k" (fun () -> be.AttentionForward(q, k, k, o, lse, 1f, null, null))      // 3 heads, 2 kv heads
                throwsNaming "v" (fun () -> be.AttentionForward(q, kOk, vBad, o, lse, 1f, null, null))
                throwsNaming "lse" (fun () -> be.AttentionForward(q, kOk, kOk, o, lseBad, 1f, null, null))
            }
    ]
