/// Gated delta rule kernels (docs/kernels.md §3) against the double-precision token-loop reference
/// (Reference/GdnReference.fs), in the style of fla's tests (§3.5): odd T (partial chunks), head sizes that
/// are not powers of two, h0 and d(final state), in-kernel L2 norm, β near 0 and 1, g ∈ U[−20, −1e-4] with
/// some g = 0; both forms (recurrent, chunked), chunk sizes 16/32/64; the reference's own gradients are
/// checked by central finite differences.
module TaylorCalibrate.Tests.Ops.GdnTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests

module Ref = TaylorCalibrate.Tests.GdnReference

// Backends that run every test below (both GDN forms). Vulkan runs its own, smaller list (`vulkanTests` at
// the end): lavapipe compiles every (K, V, chunk) specialisation of every kernel, and is slow.
let backends = [ Backends.cpu ]

/// Tolerances: relative RMS error RMS(ref − out)/RMS(ref) against the double reference, fp32 kernels.
/// fp32 has a unit roundoff of 6e-8; a length-K dot product and a state carried over T steps with decays
/// ≤ 1 gather errors of about √(K·T)·6e-8 ≈ 1e-5 at K = 128, T = 300 in the worst (slow-decay) case. The
/// chunked form adds the fp32 local cumsum: with g ≈ −20 per step, γ reaches −1280 in a chunk, whose ulp
/// (1e-4) becomes a relative error of e^{γ_r−γ_j} for neighbouring tokens.
/// Observed maxima over this suite (CPU, TC_PRINT_ERRORS=1): recurrent ≤ 3e-7 (dg 1.3e-6); chunked 64
/// o 1.6e-6, ht 5.3e-6, dq/dk/dv ≤ 2.8e-6, dg 3.8e-6, dβ 1e-6 (all in the g = Wide, K = 8 case);
/// chunks 16/32 ≤ 5e-7. The limits keep ≥ 2× (outputs) and ~10× (gradients) headroom, are far below fla's
/// fp16 limits (5e-3, 8e-3, 2e-2), and catch a 1 % error in any single gradient term.
module Tol =
    /// o and the final state.
    let output = 1e-5
    /// dq, dk, dv, dh0: one more pass of fp32 sums than the forward, plus the L2-norm backward.
    let grad = 3e-5
    /// dg, dβ: sums over whole rows/states of products that largely cancel (e.g. dγ = q·dq − k·dk), so their
    /// relative error is the largest (fla allows 2.5× more here than for dq/dk/dv).
    let gateGrad = 5e-5
    /// Pass outright when every |Δ| is below this (fla's 1e-6): values that are all ~0 (e.g. β ≈ 0).
    let absFloor = 1e-6
    /// Finite-difference check of the double reference: central differences with step 1e-5 are exact to
    /// O(ε²·f‴) ≈ 1e-10 relative, far below any real gradient error.
    let finiteDifference = 1e-6

/// Decay regimes: g ∈ U[−20, −1e-4] (docs/kernels.md §3.4) or a slow U[−0.1, −1e-4] (long memory); in both,
/// every 5th g is exactly 0.
type Gates =
    | Wide
    | Slow

/// β ∈ U(0,1), or clustered near 0 or near 1.
type Betas =
    | Uniform
    | NearZero
    | NearOne

type Case =
    { B: int; T: int; H: int; K: int; V: int
      H0: bool; Dht: bool; L2: bool
      Gates: Gates; Betas: Betas; Seed: int }
    override c.ToString() =
        let opt b s = if b then " " + s else ""
        let flags = opt c.H0 "h0" + opt c.Dht "dht" + opt c.L2 "l2"
        $"B={c.B} T={c.T} H={c.H} K={c.K} V={c.V}{flags} g={c.Gates} β={c.Betas}"

/// TC_PRINT_ERRORS=1 prints every observed relative RMS error (to re-derive the tolerances).
let printErrors = Environment.GetEnvironmentVariable "TC_PRINT_ERRORS" = "1"

/// fp32 inputs of a case (the reference gets exactly these values in double).
type Data =
    { Q: float32[]; K: float32[]; V: float32[]; G: float32[]; Beta: float32[]
      H0: float32[] option; DO: float32[]; Dht: float32[] option }

let makeData (c: Case) =
    let n3 = c.B * c.T * c.H
    let s = c.Seed * 100
    // without the L2 norm, keep ‖k‖ ≈ 1 so the delta rule is stable (β‖k‖² < 2)
    let qkStd = if c.L2 then 1.0 else 1.0 / sqrt (float c.K)
    let g =
        let lo = match c.Gates with Wide -> -20.0 | Slow -> -0.1
        Rand.uniform (s + 4) lo -1e-4 n3 |> Array.mapi (fun i x -> if i % 5 = 3 then 0f else x)
    let beta =
        match c.Betas with
        | Uniform -> Rand.uniform (s + 5) 0.0 1.0 n3
        | NearZero -> Rand.uniform (s + 5) 0.0 1e-3 n3
        | NearOne -> Rand.uniform (s + 5) 0.999 1.0 n3
    { Q = Rand.normal (s + 1) qkStd (n3 * c.K)
      K = Rand.normal (s + 2) qkStd (n3 * c.K)
      V = Rand.normal (s + 3) 1.0 (n3 * c.V)
      G = g
      Beta = beta
      H0 = if c.H0 then Some(Rand.normal (s + 6) 0.5 (c.B * c.H * c.K * c.V)) else None
      DO = Rand.normal (s + 7) 1.0 (n3 * c.V)
      Dht = if c.Dht then Some(Rand.normal (s + 8) 1.0 (c.B * c.H * c.K * c.V)) else None }

let toDouble (a: float32[]) = Array.map float a

let refInputs (c: Case) (d: Data) : Ref.Inputs =
    { B = c.B; T = c.T; H = c.H; K = c.K; V = c.V
      Q = toDouble d.Q; Kx = toDouble d.K; Vx = toDouble d.V; G = toDouble d.G; Beta = toDouble d.Beta
      H0 = Option.map toDouble d.H0
      Scale = 1.0 / sqrt (float c.K)
      L2 = c.L2 }

/// What a backend returns for a case: o, ht, and the gradients (dh0 only when h0 is given).
type Result =
    { O: float32[]; Ht: float32[]; DQ: float32[]; DK: float32[]; DV: float32[]
      DG: float32[]; DBeta: float32[]; DH0: float32[] option }

let run (be: IBackend) (c: Case) (d: Data) (mode: GdnMode) (chunk: int) : Result =
    let spec = GdnSpec(float32 (1.0 / sqrt (float c.K)), c.L2, mode, chunk)
    let t (a: float32[]) (shape: int list) = be.FromArray(a, Array.ofList shape)
    let qkShape, vShape, gShape, sShape = [ c.B; c.T; c.H; c.K ], [ c.B; c.T; c.H; c.V ], [ c.B; c.T; c.H ], [ c.B; c.H; c.K; c.V ]
    use q = t d.Q qkShape
    use k = t d.K qkShape
    use v = t d.V vShape
    use g = t d.G gShape
    use beta = t d.Beta gShape
    let h0 = d.H0 |> Option.map (fun a -> t a sShape)
    use o = be.Allocate(Array.ofList vShape)
    use ht = be.Allocate(Array.ofList sShape)
    use dO = t d.DO vShape
    let dht = d.Dht |> Option.map (fun a -> t a sShape)
    use dq = be.Allocate(Array.ofList qkShape)
    use dk = be.Allocate(Array.ofList qkShape)
    use dv = be.Allocate(Array.ofList vShape)
    use dg = be.Allocate(Array.ofList gShape)
    use db = be.Allocate(Array.ofList gShape)
    let dh0 = h0 |> Option.map (fun _ -> be.Allocate(Array.ofList sShape))
    try
        be.GdnForward(q, k, v, g, beta, Option.toObj h0, o, ht, spec)
        be.GdnBackward(q, k, v, g, beta, Option.toObj h0, dO, Option.toObj dht, dq, dk, dv, dg, db, Option.toObj dh0, spec)
        { O = o.ToArray(); Ht = ht.ToArray(); DQ = dq.ToArray(); DK = dk.ToArray(); DV = dv.ToArray()
          DG = dg.ToArray(); DBeta = db.ToArray(); DH0 = dh0 |> Option.map (fun t -> t.ToArray()) }
    finally
        for x in [ h0; dht; dh0 ] do Option.iter (fun (x: Tensor) -> x.Dispose()) x

/// The double reference of a case: forward, and the gradients of Σ o⊙dO + Σ ht⊙dht.
type Expected = { Fwd: Ref.Outputs; Grads: Ref.Grads }

let expected (c: Case) (d: Data) =
    let x = refInputs c d
    { Fwd = Ref.forward x; Grads = Ref.backward x (toDouble d.DO) (Option.map toDouble d.Dht) }

/// Checks every output and gradient of a backend result against the reference, each with its tolerance.
let checkAll (e: Expected) (r: Result) (what: string) =
    let close tol (exp: float[]) (act: float32[]) name =
        if printErrors then eprintfn "error %s %s %.2e" what name (Numeric.relRms exp act)
        Numeric.close tol Tol.absFloor exp act $"{what}: {name}"
    close Tol.output e.Fwd.O r.O "o"
    close Tol.output e.Fwd.Ht r.Ht "ht"
    close Tol.grad e.Grads.DQ r.DQ "dq"
    close Tol.grad e.Grads.DK r.DK "dk"
    close Tol.grad e.Grads.DV r.DV "dv"
    close Tol.gateGrad e.Grads.DG r.DG "dg"
    close Tol.gateGrad e.Grads.DBeta r.DBeta "dbeta"
    r.DH0 |> Option.iter (fun a -> close Tol.grad e.Grads.DH0 a "dh0")

/// Checks a result against another backend/form's result at the same tolerances as against the reference.
let checkSame (baseline: Result) (r: Result) (what: string) =
    let close tol (exp: float32[]) (act: float32[]) name =
        let expD = Array.map float exp
        if printErrors then eprintfn "error %s %s %.2e" what name (Numeric.relRms expD act)
        Numeric.close tol Tol.absFloor expD act $"{what}: {name}"
    close Tol.output baseline.O r.O "o"
    close Tol.output baseline.Ht r.Ht "ht"
    close Tol.grad baseline.DQ r.DQ "dq"
    close Tol.grad baseline.DK r.DK "dk"
    close Tol.grad baseline.DV r.DV "dv"
    close Tol.gateGrad baseline.DG r.DG "dg"
    close Tol.gateGrad baseline.DBeta r.DBeta "dbeta"
    match baseline.DH0, r.DH0 with
    | Some a, Some b -> close Tol.grad a b "dh0"
    | _ -> ()

let cases =
    [ { B = 2; T = 1; H = 2; K = 8; V = 8; H0 = true; Dht = true; L2 = true; Gates = Wide; Betas = Uniform; Seed = 1 }
      { B = 1; T = 63; H = 2; K = 60; V = 64; H0 = false; Dht = false; L2 = true; Gates = Slow; Betas = Uniform; Seed = 2 }
      { B = 1; T = 64; H = 1; K = 64; V = 64; H0 = true; Dht = true; L2 = false; Gates = Wide; Betas = NearOne; Seed = 3 }
      { B = 1; T = 65; H = 1; K = 100; V = 100; H0 = true; Dht = true; L2 = true; Gates = Slow; Betas = NearZero; Seed = 4 }
      { B = 2; T = 75; H = 1; K = 64; V = 60; H0 = true; Dht = false; L2 = true; Gates = Slow; Betas = NearOne; Seed = 5 }
      { B = 1; T = 130; H = 2; K = 16; V = 100; H0 = true; Dht = true; L2 = false; Gates = Slow; Betas = Uniform; Seed = 6 }
      { B = 1; T = 300; H = 1; K = 128; V = 128; H0 = true; Dht = true; L2 = true; Gates = Slow; Betas = Uniform; Seed = 7 }
      { B = 1; T = 300; H = 2; K = 8; V = 8; H0 = false; Dht = true; L2 = true; Gates = Wide; Betas = NearZero; Seed = 8 } ]

/// Vulkan chunked-form cases: T ∈ {1, 63, 64, 65, 75, 130}, K/V ∈ {16, 60, 64}, with and without h0, dht and
/// the L2 norm, in few distinct (K, V) pairs (lavapipe compiles every specialisation of every kernel).
let vulkanChunkedCases =
    [ { B = 2; T = 1; H = 2; K = 64; V = 64; H0 = true; Dht = true; L2 = true; Gates = Wide; Betas = NearZero; Seed = 11 }
      cases[1]
      cases[2]
      { B = 1; T = 65; H = 2; K = 64; V = 64; H0 = true; Dht = true; L2 = true; Gates = Slow; Betas = Uniform; Seed = 12 }
      cases[4]
      { B = 1; T = 130; H = 2; K = 16; V = 64; H0 = true; Dht = true; L2 = false; Gates = Slow; Betas = Uniform; Seed = 13 } ]

/// A tiny case for the finite-difference check of the reference.
let tinyCase l2 = { B = 1; T = 5; H = 2; K = 3; V = 2; H0 = true; Dht = true; L2 = l2; Gates = Slow; Betas = Uniform; Seed = 9 }

let referenceFiniteDifferences l2 =
    test $"reference gradients match central finite differences (L2 norm {l2})" {
        let c = tinyCase l2
        let d = makeData c
        let x = refInputs c d
        let dO, dht = toDouble d.DO, Option.map toDouble d.Dht
        let grads = Ref.backward x dO dht
        let eps = 1e-5
        let numeric (get: Ref.Inputs -> float[]) (set: Ref.Inputs -> float[] -> Ref.Inputs) =
            let a = get x
            Array.init a.Length (fun i ->
                let at delta =
                    let a2 = Array.copy a
                    a2[i] <- a2[i] + delta
                    Ref.loss (set x a2) dO dht
                (at eps - at -eps) / (2.0 * eps))
        let check name (analytic: float[]) (num: float[]) =
            let diff = Array.map2 (fun (a: float) (b: float) -> (a - b) * (a - b)) analytic num |> Array.sum
            let den = num |> Array.sumBy (fun b -> b * b)
            let rel = sqrt (diff / max den 1e-300)
            Expect.isLessThan rel Tol.finiteDifference $"{name}: relative RMS error of the analytic gradient"
        check "dq" grads.DQ (numeric (fun x -> x.Q) (fun x a -> { x with Q = a }))
        check "dk" grads.DK (numeric (fun x -> x.Kx) (fun x a -> { x with Kx = a }))
        check "dv" grads.DV (numeric (fun x -> x.Vx) (fun x a -> { x with Vx = a }))
        check "dg" grads.DG (numeric (fun x -> x.G) (fun x a -> { x with G = a }))
        check "dbeta" grads.DBeta (numeric (fun x -> x.Beta) (fun x a -> { x with Beta = a }))
        check "dh0" grads.DH0 (numeric (fun x -> x.H0.Value) (fun x a -> { x with H0 = Some a }))
    }

/// Vulkan: every case in the recurrent form, and the chunked cases in the chunked form (against the reference,
/// the recurrent form and other chunk sizes), all at the CPU's tolerances.
let vulkanTests =
    let h = Backends.vulkan
    [ for c in cases do
        test $"{h.Name} recurrent vs reference: {c}" {
            let be = h.Get()
            let d = makeData c
            checkAll (expected c d) (run be c d GdnMode.Recurrent 64) "recurrent"
        }
      for c in vulkanChunkedCases do
        test $"{h.Name} chunked (64) vs reference and vs recurrent: {c}" {
            let be = h.Get()
            let d = makeData c
            let rc = run be c d GdnMode.Chunked 64
            checkAll (expected c d) rc "chunked 64"
            checkSame (run be c d GdnMode.Recurrent 64) rc "chunked 64 vs recurrent"
        }
      let c = vulkanChunkedCases[3]
      test $"{h.Name} chunk size 16/32 gives the 64 result: {c}" {
          let be = h.Get()
          let d = makeData c
          let e = expected c d
          let r64 = run be c d GdnMode.Chunked 64
          for chunk in [ 16; 32 ] do
              let r = run be c d GdnMode.Chunked chunk
              checkAll e r $"chunked {chunk}"
              checkSame r64 r $"chunk {chunk} vs 64"
      }
      test $"{h.Name} mode selector picks the form that runs when the other is refused" {
          let be = h.Get()
          // T·(recurrent backward loop count per token, 22 at K = 16, V = 64) exceeds lavapipe's loop guard,
          // so the recurrent backward throws NotSupportedException there, while the chunked form fits
          let t = GdnModeSelector.Measure(be, B = 1, T = 3000, H = 1, K = 16, V = 64, repeats = 1)
          if Double.IsPositiveInfinity t.RecurrentSeconds then
              Expect.isTrue (Double.IsFinite t.ChunkedSeconds) "chunked form timed"
              Expect.equal t.Faster GdnMode.Chunked "the refused recurrent form is never chosen"
          else
              skiptest "this device has no loop budget (not lavapipe): both forms run"
      }
      test $"{h.Name} rejects bad arguments with the tensor's name" {
          let be = h.Get()
          let z (s: int list) = be.Allocate(Array.ofList s)
          use q = z [ 1; 4; 2; 8 ]
          use v = z [ 1; 4; 2; 6 ]
          use gBad = z [ 1; 2; 4 ]
          use beta = z [ 1; 4; 2 ]
          use o = z [ 1; 4; 2; 6 ]
          let ex = Expect.throwsC (fun () -> be.GdnForward(q, q, v, gBad, beta, null, o, null, GdnSpec(0.35f, Mode = GdnMode.Recurrent))) id
          Expect.isTrue (ex :? ArgumentException) $"ArgumentException, got {ex.GetType().Name}"
          Expect.stringContains ex.Message "'g'" "message names the tensor"
      } ]

[<Tests>]
let tests =
    testList "Gdn" [
        referenceFiniteDifferences false
        referenceFiniteDifferences true
        for h in backends do
            for c in cases do
                test $"{h.Name} recurrent and chunked (64) vs reference: {c}" {
                    let be = h.Get()
                    let d = makeData c
                    let e = expected c d
                    checkAll e (run be c d GdnMode.Recurrent 64) "recurrent"
                    checkAll e (run be c d GdnMode.Chunked 64) "chunked 64"
                }
            for c in [ cases[4]; cases[6] ] do
                test $"{h.Name} chunk size 16/32 gives the 64 result: {c}" {
                    let be = h.Get()
                    let d = makeData c
                    let e = expected c d
                    let r64 = run be c d GdnMode.Chunked 64
                    for chunk in [ 16; 32 ] do
                        let r = run be c d GdnMode.Chunked chunk
                        checkAll e r $"chunked {chunk}"
                        // and directly against chunk 64, at the same tolerance as against the reference
                        let toD = Array.map float
                        Numeric.close Tol.output Tol.absFloor (toD r64.O) r.O $"chunk {chunk} vs 64: o"
                        Numeric.close Tol.gateGrad Tol.absFloor (toD r64.DG) r.DG $"chunk {chunk} vs 64: dg"
                }
            test $"{h.Name} rejects bad arguments with the tensor's name" {
                let be = h.Get()
                let z (s: int list) = be.Allocate(Array.ofList s)
                use q = z [ 1; 4; 2; 8 ]
                use k = z [ 1; 4; 2; 8 ]
                use v = z [ 1; 4; 2; 6 ]
                use g = z [ 1; 4; 2 ]
                use gBad = z [ 1; 2; 4 ]
                use beta = z [ 1; 4; 2 ]
                use o = z [ 1; 4; 2; 6 ]
                use h0Bad = z [ 1; 2; 6; 8 ]
                use qBig = z [ 1; 4; 2; 257 ]
                let spec = GdnSpec(0.35f)
                let throwsNaming (name: string) (f: unit -> unit) =
                    let ex = Expect.throwsC f id
                    Expect.isTrue (ex :? ArgumentException) $"{name}: ArgumentException, got {ex.GetType().Name}"
                    Expect.stringContains ex.Message $"'{name}'" "message names the tensor"
                throwsNaming "g" (fun () -> be.GdnForward(q, k, v, gBad, beta, null, o, null, spec))
                throwsNaming "h0" (fun () -> be.GdnForward(q, k, v, g, beta, h0Bad, o, null, spec))
                throwsNaming "q" (fun () -> be.GdnForward(qBig, qBig, v, g, beta, null, o, null, spec))
                Expect.throwsT<ArgumentException> (fun () -> be.GdnForward(q, k, v, g, beta, null, o, null, GdnSpec(0.35f, ChunkSize = 48))) "chunk size 48"
            }
        yield! vulkanTests
    ]
