/// Row softmax, cross-entropy and KL(teacher‖student) over a vocabulary (IBackend.Softmax, SoftmaxBackward,
/// CrossEntropy, KlDivergence) on every backend against the double reference (Reference/LossReference.fs):
/// vocabularies of 1, 50, 1031 and 4099 (across streaming blocks), ignored targets (< 0) with exactly zero
/// gradient rows, gradScale, dlogits/dstudent as a separate tensor (overwritten), aliasing the logits, or
/// absent; logits near 100 (a kernel without the max shift overflows); argument errors.
/// Maths: docs/kernels.md §4 (Cross-entropy / KL).
module TaylorCalibrate.Tests.Ops.LossTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric
open TaylorCalibrate.Tests.Reference

/// Softmax y, relative RMS: a C-term fp32 sum of exponentials (≈ 6e-8·√C) and an exp per element (GLSL
/// allows (3 + 2|x − max|) ulp, large only where y is tiny and does not weigh in the RMS): 1e-6 + 1e-7·√C.
let private softmaxTol (cols: int) = { RelRms = fp32Accumulation 1e-6 1e-7 cols; MaxAbs = 1e-6 }

/// Softmax dx = y ⊙ (dy − Σ dy⊙y): the error of y plus a C-term row dot: 2e-6 + 2e-7·√C.
let private softmaxDxTol (cols: int) = { RelRms = fp32Accumulation 2e-6 2e-7 cols; MaxAbs = 1e-6 }

/// Cross-entropy and KL losses, relative RMS over rows: lse is a V-term fp32 sum (≈ 6e-8·√V) and is rounded
/// to half an ulp of |z| + ln V (≈ 5e-7 for these logits), which shifts every log-probability; the losses
/// are O(1): 2e-6 + 1e-7·√V, or max |Δ| ≤ 2e-6 (an O(1) loss carrying a few such half-ulps).
let private lossTol (v: int) = { RelRms = fp32Accumulation 2e-6 1e-7 v; MaxAbs = 2e-6 }

/// dlogits and dstudent, relative RMS: gradScale·(p − onehot or p_T), p with the errors of softmaxTol.
/// No absolute escape: the values scale with gradScale, so a fixed absolute bound would mean nothing.
let private gradTol (v: int) = { RelRms = fp32Accumulation 1e-6 1e-7 v; MaxAbs = 0.0 }

/// Losses and gradients for logits near 100: those inputs carry ulp 7.6e-6 themselves, and any fp32 lse
/// ≈ 100 is rounded by up to 3.8e-6, shifting every log-probability (KL inherits it from teacher and student).
/// The point of these cases is that nothing overflows; the accuracy is what fp32 allows at that magnitude.
let private offsetTol = { RelRms = 2e-5; MaxAbs = 2e-5 }

let private count (shape: int[]) = Array.fold (*) 1 shape
let private garbage n = Array.create n 777.0f

// ---- softmax -------------------------------------------------------------------------------------------

let private softmaxTests (h: Backends.BackendHandle) (rows: int, cols: int, offset: float32) =
    let n = rows * cols
    let x = Rand.normal (rows + cols) 3.0 n |> Array.map (fun v -> v + offset)
    let dy = Rand.normal 11 1.0 n
    let name = $"{rows}x{cols}" + (if offset <> 0.0f then $" offset {offset}" else "")
    [ test $"Softmax {name}" {
          let be = h.Get()
          use tx = be.FromArray(x, rows, cols)
          use y = be.FromArray(garbage n, rows, cols)
          be.Softmax(tx, y, cols)
          closeTo (softmaxTol cols) (Loss.softmax (toDouble x) cols) (y.ToArray()) "y" }
      test $"Softmax backward overwrites dx {name}" {
          let be = h.Get()
          use tx = be.FromArray(x, rows, cols)
          use y = be.Allocate [| rows; cols |]
          be.Softmax(tx, y, cols)
          use tdy = be.FromArray(dy, rows, cols)
          use dx = be.FromArray(garbage n, rows, cols)
          be.SoftmaxBackward(y, tdy, dx, cols)
          let ey = Loss.softmax (toDouble x) cols
          closeTo (softmaxDxTol cols) (Loss.softmaxBackward ey (toDouble dy) cols) (dx.ToArray()) "dx" } ]

// ---- cross-entropy -------------------------------------------------------------------------------------

/// Where the gradient goes: a separate tensor, the logits tensor itself, or nowhere.
type private GradTarget =
    | Separate
    | Aliased
    | NoGradient

/// Targets with about a quarter ignored (−1, and one −100 like PyTorch's ignore_index).
let private targetsFor (seed: int) (n: int) (v: int) =
    let r = Random seed
    Array.init n (fun i -> if i = 1 then -100 elif n > 1 && r.Next 4 = 0 then -1 else r.Next v)

let private crossEntropyTest (h: Backends.BackendHandle) (n: int, v: int, offset: float32) (mode: GradTarget) (allIgnored: bool) =
    let logits = Rand.normal (n * v) 2.0 (n * v) |> Array.map (fun z -> z + offset)
    let targets = if allIgnored then Array.create n -1 else targetsFor (n + v) n v
    let valid = targets |> Array.filter (fun t -> t >= 0) |> Array.length
    let gradScale = if valid = 0 then 1.0f else 1.0f / float32 valid
    let name = $"CrossEntropy N={n} V={v} {mode}" + (if offset <> 0.0f then $" offset {offset}" else "") + (if allIgnored then " all ignored" else "")
    test name {
        let be = h.Get()
        use tz = be.FromArray(logits, n, v)
        use tt = be.FromInts(targets, n)
        use loss = be.FromArray(garbage n, n)
        use separate = be.FromArray(garbage (n * v), n, v)
        let d =
            match mode with
            | Separate -> separate
            | Aliased -> tz
            | NoGradient -> null
        be.CrossEntropy(tz, tt, loss, d, gradScale)
        let eloss, egrad = Loss.crossEntropy (toDouble logits) targets v (float gradScale)
        let lt, gt = if offset <> 0.0f then offsetTol, offsetTol else lossTol v, gradTol v
        closeTo lt eloss (loss.ToArray()) "loss"
        match mode with
        | NoGradient -> bitEqual logits (tz.ToArray()) "logits unchanged without dlogits"
        | _ ->
            let actual = d.ToArray()
            for r in 0 .. n - 1 do
                if targets[r] < 0 then
                    match actual[r * v .. r * v + v - 1] |> Array.tryFind (fun g -> g <> 0.0f) with
                    | Some g -> failtestf "dlogits row %d has ignored target %d but holds %g, not 0" r targets[r] g
                    | None -> ()
            closeTo gt egrad actual "dlogits" }

// ---- KL ------------------------------------------------------------------------------------------------

let private klTest (h: Backends.BackendHandle) (n: int, v: int, offset: float32) (mode: GradTarget) (correlated: bool) =
    let teacher = Rand.normal (n + v) 2.0 (n * v)
    let noise = Rand.normal (n + v + 1) (if correlated then 0.7 else 2.0) (n * v)
    let student = Array.map2 (fun (t: float32) e -> (if correlated then 0.8f * t else 0.0f) + e - offset / 2.0f) teacher noise
    let teacher = teacher |> Array.map (fun t -> t + offset)
    let gradScale = 1.0f / float32 n
    let name = $"KlDivergence N={n} V={v} {mode}" + (if correlated then " correlated" else " independent") + (if offset <> 0.0f then $" offsets {offset}, {-offset / 2.0f}" else "")
    test name {
        let be = h.Get()
        use tt = be.FromArray(teacher, n, v)
        use ts = be.FromArray(student, n, v)
        use loss = be.FromArray(garbage n, n)
        use separate = be.FromArray(garbage (n * v), n, v)
        let d =
            match mode with
            | Separate -> separate
            | Aliased -> ts
            | NoGradient -> null
        be.KlDivergence(tt, ts, loss, d, gradScale)
        let eloss, egrad = Loss.klDivergence (toDouble teacher) (toDouble student) v (float gradScale)
        let lt, gt = if offset <> 0.0f then offsetTol, offsetTol else lossTol v, gradTol v
        closeTo lt eloss (loss.ToArray()) "loss"
        bitEqual teacher (tt.ToArray()) "teacher unchanged"
        match mode with
        | NoGradient -> bitEqual student (ts.ToArray()) "student unchanged without dstudent"
        | _ -> closeTo gt egrad (d.ToArray()) "dstudent" }

let private lossCases = [ 1, 1, 0.0f; 3, 50, 0.0f; 33, 50, 0.0f; 7, 1031, 0.0f; 5, 4099, 0.0f; 4, 1031, 100.0f ]
let private modes = [ Separate; Aliased; NoGradient ]

// ---- errors --------------------------------------------------------------------------------------------

let private errorTests (h: Backends.BackendHandle) =
    let make (be: IBackend) (shape: int[]) = be.FromArray(Array.zeroCreate (count shape), shape)
    [ test "Softmax with y of another size names 'y'" {
          let be = h.Get()
          use x = make be [| 3; 7 |]
          use y = make be [| 3; 8 |]
          Backends.expectArgumentError "y" "[3,8]" (fun () -> be.Softmax(x, y, 7)) "Softmax" }
      test "Softmax of x that does not split into rows names 'x'" {
          let be = h.Get()
          use x = make be [| 3; 7 |]
          use y = make be [| 3; 7 |]
          Backends.expectArgumentError "x" "[3,7]" (fun () -> be.Softmax(x, y, 5)) "Softmax" }
      test "SoftmaxBackward with dy of another size names 'dy'" {
          let be = h.Get()
          use y = make be [| 3; 7 |]
          use dy = make be [| 2; 7 |]
          use dx = make be [| 3; 7 |]
          Backends.expectArgumentError "dy" "[2,7]" (fun () -> be.SoftmaxBackward(y, dy, dx, 7)) "SoftmaxBackward" }
      test "CrossEntropy with one target too many names 'targets'" {
          let be = h.Get()
          use z = make be [| 3; 7 |]
          use t = be.FromInts([| 0; 1; 2; 3 |], 4)
          use loss = make be [| 3 |]
          Backends.expectArgumentError "targets" "[4]" (fun () -> be.CrossEntropy(z, t, loss, null, 1.0f)) "CrossEntropy" }
      // One behaviour on every backend (IBackend.CrossEntropy): a target ≥ V is an input error raised before
      // any work is queued (loss keeps its old contents); negative targets stay "ignored".
      test "CrossEntropy with a target = V names 'targets' and leaves loss untouched" {
          let be = h.Get()
          use z = make be [| 3; 7 |]
          use t = be.FromInts([| 0; 7; -1 |], 3)
          use loss = be.FromArray(garbage 3, 3)
          Backends.expectArgumentError "targets" "" (fun () -> be.CrossEntropy(z, t, loss, null, 1.0f)) "CrossEntropy"
          Expect.equal (loss.ToArray()) (garbage 3) "loss untouched" }
      test "CrossEntropy with F32 targets names 'targets'" {
          let be = h.Get()
          use z = make be [| 3; 7 |]
          use t = make be [| 3 |]
          use loss = make be [| 3 |]
          Backends.expectArgumentError "targets" "" (fun () -> be.CrossEntropy(z, t, loss, null, 1.0f)) "CrossEntropy" }
      test "CrossEntropy with a short loss names 'loss'" {
          let be = h.Get()
          use z = make be [| 3; 7 |]
          use t = be.FromInts([| 0; 1; 2 |], 3)
          use loss = make be [| 2 |]
          Backends.expectArgumentError "loss" "[2]" (fun () -> be.CrossEntropy(z, t, loss, null, 1.0f)) "CrossEntropy" }
      test "CrossEntropy with dlogits of another shape names 'dlogits'" {
          let be = h.Get()
          use z = make be [| 3; 7 |]
          use t = be.FromInts([| 0; 1; 2 |], 3)
          use loss = make be [| 3 |]
          use dz = make be [| 3; 6 |]
          Backends.expectArgumentError "dlogits" "[3,6]" (fun () -> be.CrossEntropy(z, t, loss, dz, 1.0f)) "CrossEntropy" }
      test "KlDivergence with student of another shape names 'student'" {
          let be = h.Get()
          use te = make be [| 3; 7 |]
          use st = make be [| 3; 8 |]
          use loss = make be [| 3 |]
          Backends.expectArgumentError "student" "[3,8]" (fun () -> be.KlDivergence(te, st, loss, null, 1.0f)) "KlDivergence" }
      test "KlDivergence with dstudent of another shape names 'dstudent'" {
          let be = h.Get()
          use te = make be [| 3; 7 |]
          use st = make be [| 3; 7 |]
          use loss = make be [| 3 |]
          use ds = make be [| 3; 6 |]
          Backends.expectArgumentError "dstudent" "[3,6]" (fun () -> be.KlDivergence(te, st, loss, ds, 1.0f)) "KlDivergence" } ]

[<Tests>]
let tests =
    // Sequenced: the backends are shared by the whole run and are not thread-safe (one caller at a time).
    testSequenced <| testList "Ops.Loss" [
        for h in Backends.all ->
            testList h.Name [
                testList "softmax" [
                    for c in [ 1, 1, 0.0f; 3, 7, 0.0f; 5, 129, 0.0f; 17, 1000, 0.0f; 5, 129, 100.0f ] do
                        yield! softmaxTests h c ]
                testList "cross-entropy" (
                    [ for c in lossCases do
                        for m in modes -> crossEntropyTest h c m false ]
                    @ [ crossEntropyTest h (3, 50, 0.0f) Aliased true ])
                testList "kl" [
                    for c in lossCases do
                    for m in modes do
                    for correlated in [ false; true ] -> klTest h c m correlated ]
                testList "errors" (errorTests h) ] ]
