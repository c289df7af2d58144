/// Whole-tensor reductions, AdamW and global gradient-norm clipping (IBackend.Reduce, AdamW, ClipGradNorm)
/// on every backend against the double reference (Reference/OptimReference.fs): sizes from 1 to 100003,
/// the empty max-abs, determinism (same bits twice), several AdamW steps with bias correction, weight decay
/// and an eps-dominated case, clipping above and below the threshold, argument errors.
/// Maths: docs/kernels.md §4 (AdamW, Gradient-norm clipping, Reductions).
module TaylorCalibrate.Tests.Ops.OptimTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric
open TaylorCalibrate.Tests.Reference

/// Sum, mean and sum of squares: |Δ| ≤ reduceTol n · Σ|x| (Σx² for the sum of squares; divided by n for
/// the mean). Measuring against Σ|x| rather than |Σx| makes the bound independent of cancellation; an
/// n-term fp32 sum in any fixed order errs by about 6e-8·√n of that (a tree sum far less), so
/// 1e-6 + 1e-7·√n leaves room for any order while a dropped block of elements still fails.
let private reduceTol (n: int) = fp32Accumulation 1e-6 1e-7 n

/// AdamW m and v, relative RMS: two products and a sum in fp32 (≤ 3 roundings; the cancellation in
/// β₁m + (1−β₁)g is absorbed by the RMS over the tensor).
let private momentTol = { RelRms = 5e-7; MaxAbs = 0.0 }

/// AdamW parameters, relative RMS against θ: θ(1 − lr·wd) rounds once, the update (≈ lr) adds a few ulp.
let private paramTol = { RelRms = 1e-6; MaxAbs = 0.0 }

/// The AdamW update Δθ = θ′ − θ (exact in double from the two floats), relative RMS: fp32 resolves θ′ only
/// to half an ulp of θ (≈ 3e-8·|θ|, i.e. 6e-7 of an update of lr = 0.05), and a bias correction 1 − β₂ᵗ
/// computed in fp32 inherits the rounding of β₂ᵗ ≈ 1 (relative 6e-8/(1 − β₂ᵗ) ≈ 3e-5 at t = 2, halved by
/// the square root). Any formula slip (bias correction, eps inside the root, decay order) is O(1e-2) or more.
let private updateTol = { RelRms = 1e-4; MaxAbs = 0.0 }

/// Clipping: the norm is an fp32 sum over every gradient element (then a square root, which halves the
/// relative error), and each scaled gradient adds one rounding: 1e-6 + 1e-7·√(total elements).
let private clipTol (total: int) = { RelRms = fp32Accumulation 1e-6 1e-7 total; MaxAbs = 0.0 }

let private reduceOps = [ ReduceOp.Sum; ReduceOp.Mean; ReduceOp.SumOfSquares; ReduceOp.MaxAbs ]
let private reduceSizes = [ 1; 7; 129; 1000; 17527; 100003 ]

let private runReduce (be: IBackend) (op: ReduceOp) (x: float32[]) =
    use tx = be.FromArray(x, x.Length)
    use r = be.FromArray([| 777.0f |], 1)
    be.Reduce(op, tx, r)
    (r.ToArray())[0]

let private expectReduce (op: ReduceOp) (x: float32[]) (actual: float32) =
    let xd = toDouble x
    let expected = Optim.reduce op xd
    if Single.IsNaN actual || Single.IsInfinity actual then failtestf "%A: non-finite result %g" op actual
    match op with
    | ReduceOp.MaxAbs -> Expect.equal actual (float32 expected) "max |x| is exact"
    | _ ->
        let scale =
            match op with
            | ReduceOp.SumOfSquares -> Array.sumBy (fun v -> v * v) xd
            | ReduceOp.Mean -> Array.sumBy abs xd / float x.Length
            | _ -> Array.sumBy abs xd
        let bound = reduceTol x.Length * scale
        let err = abs (expected - float actual)
        if err > bound then failtestf "%A of %d elements: %.9g, expected %.9g (|Δ| %.3e > %.3e)" op x.Length actual expected err bound

let private reduceTests (h: Backends.BackendHandle) =
    [ for op in reduceOps do
        for n in reduceSizes ->
            test $"{op} n={n}" {
                let x = Rand.normal n 1.0 n |> Array.map (fun v -> v + 0.3f)
                expectReduce op x (runReduce (h.Get()) op x) }
      // One behaviour on every backend (IBackend.Reduce): the empty sums are 0, the empty mean is NaN (0/0).
      for op in [ ReduceOp.Sum; ReduceOp.SumOfSquares; ReduceOp.Mean ] do
          yield test $"{op} of an empty tensor" {
              let be = h.Get()
              use tx = be.Allocate [| 0 |]
              use r = be.FromArray([| 777.0f |], 1)
              be.Reduce(op, tx, r)
              let got = r.ToArray()[0]
              if op = ReduceOp.Mean then Expect.isTrue (System.Single.IsNaN got) $"mean of nothing is NaN, got {got}"
              else Expect.equal got 0.0f "sum of nothing" }
      yield test "MaxAbs of an empty tensor is 0" {
          let be = h.Get()
          use tx = be.Allocate [| 0 |]
          use r = be.FromArray([| 777.0f |], 1)
          be.Reduce(ReduceOp.MaxAbs, tx, r)
          Expect.equal (r.ToArray()) [| 0.0f |] "max |x| of nothing" }
      yield test "MaxAbs finds a single large negative element" {
          let x = Rand.normal 3 1.0 4099
          x[4000] <- -50.0f
          Expect.equal (runReduce (h.Get()) ReduceOp.MaxAbs x) 50.0f "max |x|" } ]

let private determinismTests (h: Backends.BackendHandle) =
    [ for op in [ ReduceOp.Sum; ReduceOp.Mean; ReduceOp.SumOfSquares ] ->
        test $"{op} of 100003 elements twice gives the same bits" {
            let be = h.Get()
            let x = Rand.normal 17 1.0 100003
            bitEqual [| runReduce be op x |] [| runReduce be op x |] "result" }
      yield test "ClipGradNorm twice gives the same bits" {
          let be = h.Get()
          let grads = [ Rand.normal 18 1.0 100003; Rand.normal 19 1.0 4099 ]
          let run () =
              let ts = grads |> List.map (fun g -> be.FromArray(g, g.Length))
              use norm = be.Allocate [| 1 |]
              try
                  be.ClipGradNorm(ResizeArray ts, 1.0f, norm)
                  Array.concat (norm.ToArray() :: (ts |> List.map (fun t -> t.ToArray())))
              finally for t in ts do t.Dispose()
          bitEqual (run ()) (run ()) "norm and clipped gradients" } ]

let private adamWTests (h: Backends.BackendHandle) =
    /// Runs the given steps (spec, gradient) on one parameter tensor, checking each against the reference
    /// applied to the backend's own state before the step (so errors do not compound).
    let steps (n: int) (param0: float32[]) (plan: (AdamWSpec * float32[]) list) =
        let be = h.Get()
        use p = be.FromArray(param0, n)
        use m = be.Allocate [| n |]
        use v = be.Allocate [| n |]
        for spec, grad in plan do
            let p0, m0, v0 = p.ToArray(), m.ToArray(), v.ToArray()
            use g = be.FromArray(grad, n)
            be.AdamW(p, g, m, v, spec)
            let ep, em, ev = Optim.adamW spec (toDouble p0) (toDouble grad) (toDouble m0) (toDouble v0)
            let p1 = p.ToArray()
            let t = spec.Step
            closeTo momentTol em (m.ToArray()) $"m after step {t}"
            closeTo momentTol ev (v.ToArray()) $"v after step {t}"
            closeTo paramTol ep p1 $"param after step {t}"
            let update = Array.map2 (fun (a: float32) (b: float32) -> float a - float b) p1 p0
            closeTo updateTol (Array.map2 (fun e (b: float32) -> e - float b) ep p0) (Array.map float32 update) $"update θ′ − θ at step {t}"
            Expect.equal (g.ToArray()) grad "grad unchanged"
    [ for n in [ 1; 7; 1031; 4099 ] ->
        test $"steps 1, 2, 3 then 1000, n={n}" {
            let plan =
                [ for t in [ 1; 2; 3; 1000 ] -> AdamWSpec(0.05f, t, 0.1f, 0.9f, 0.999f, 1e-8f), Rand.normal (n + t) 1.0 n ]
            steps n (Rand.normal n 1.0 n) plan }
      yield test "eps-dominated step (gradients ≈ 1e-6, eps 1e-6), no weight decay" {
          let n = 129
          steps n (Rand.normal 5 1.0 n) [ AdamWSpec(0.01f, 1, 0.0f, 0.8f, 0.99f, 1e-6f), Rand.normal 6 1e-6 n
                                          AdamWSpec(0.01f, 2, 0.0f, 0.8f, 0.99f, 1e-6f), Rand.normal 7 1e-6 n ] } ]

let private clipTests (h: Backends.BackendHandle) =
    let sizes = [ 1; 7; 1031; 33 * 65 ]
    let grads = sizes |> List.mapi (fun i n -> Rand.normal (30 + i) 1.0 n)
    let total = List.sum sizes
    let run (maxNorm: float32) (grads: float32[] list) =
        let be = h.Get()
        let ts = grads |> List.map (fun g -> be.FromArray(g, g.Length))
        use norm = be.FromArray([| 777.0f |], 1)
        try
            be.ClipGradNorm(ResizeArray ts, maxNorm, norm)
            (norm.ToArray())[0], ts |> List.map (fun t -> t.ToArray())
        finally for t in ts do t.Dispose()
    [ test "norm above maxNorm: every gradient scaled by maxNorm/(N + 1e-6)" {
          let norm, actual = run 1.0f grads
          let en, expected = Optim.clipGradNorm (List.map toDouble grads) 1.0
          closeTo (clipTol total) [| en |] [| norm |] "norm"
          List.iteri2 (fun i e a -> closeTo (clipTol total) e a $"gradient {i}") expected actual }
      test "norm below maxNorm: gradients keep their bits" {
          let norm, actual = run 1000.0f grads
          let en, _ = Optim.clipGradNorm (List.map toDouble grads) 1000.0
          closeTo (clipTol total) [| en |] [| norm |] "norm"
          List.iteri2 (fun i e a -> bitEqual e a $"gradient {i}") grads actual }
      test "a single small tensor, clipped to 0.5" {
          let g = [ [| 3.0f; -4.0f; 0.0f |] ]
          let norm, actual = run 0.5f g
          let en, expected = Optim.clipGradNorm (List.map toDouble g) (float 0.5f)
          closeTo (clipTol 3) [| en |] [| norm |] "norm"
          closeTo (clipTol 3) expected[0] actual[0] "gradient" } ]

let private errorTests (h: Backends.BackendHandle) =
    [ test "Reduce into an empty result names 'result'" {
          let be = h.Get()
          use x = be.Allocate [| 5 |]
          use r = be.Allocate [| 0 |]
          Backends.expectArgumentError "result" "[0]" (fun () -> be.Reduce(ReduceOp.Sum, x, r)) "Reduce" }
      test "AdamW with m of another size names 'm'" {
          let be = h.Get()
          use p = be.Allocate [| 5 |]
          use g = be.Allocate [| 5 |]
          use m = be.Allocate [| 4 |]
          use v = be.Allocate [| 5 |]
          Backends.expectArgumentError "m" "[4]" (fun () -> be.AdamW(p, g, m, v, AdamWSpec(0.1f, 1))) "AdamW" }
      test "AdamW with grad of another size names 'grad'" {
          let be = h.Get()
          use p = be.Allocate [| 5 |]
          use g = be.Allocate [| 6 |]
          use m = be.Allocate [| 5 |]
          use v = be.Allocate [| 5 |]
          Backends.expectArgumentError "grad" "[6]" (fun () -> be.AdamW(p, g, m, v, AdamWSpec(0.1f, 1))) "AdamW" }
      test "ClipGradNorm into an empty norm names 'norm'" {
          let be = h.Get()
          use g = be.Allocate [| 5 |]
          use norm = be.Allocate [| 0 |]
          Backends.expectArgumentError "norm" "[0]" (fun () -> be.ClipGradNorm(ResizeArray [ g ], 1.0f, norm)) "ClipGradNorm" } ]

[<Tests>]
let tests =
    // Sequenced: the backends are shared by the whole run and are not thread-safe (one caller at a time).
    testSequenced <| testList "Ops.Optim" [
        for h in Backends.all ->
            testList h.Name [
                testList "reduce" (reduceTests h)
                testList "determinism" (determinismTests h)
                testList "adamw" (adamWTests h)
                testList "clip" (clipTests h)
                testList "errors" (errorTests h) ] ]
