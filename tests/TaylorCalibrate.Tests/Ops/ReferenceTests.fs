/// The double-precision references (tests/…/Reference/*.fs) checked on their own, before any backend is
/// compared with them: every gradient against central finite differences on tiny shapes (one test per
/// differentiable op), and the forwards against worked examples. Maths: docs/kernels.md §1, §4.
module TaylorCalibrate.Tests.Ops.ReferenceTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric
open TaylorCalibrate.Tests.Reference

/// Metric of every finite-difference check: max |analytic − numeric| / max(1, max |numeric|). Central
/// differences in double with h = 1e-5·max(1, |x|) have truncation error ≈ h²·f‴/6 ≈ 1e-10 and rounding
/// error ≈ 1e-16·|f|/h ≈ 1e-11·|f|, so 1e-6 leaves a wide margin and still catches any wrong or missing
/// term (those change gradients by O(1e-2) or more at these shapes).
let private fdTol = 1e-6

/// Worked examples are exact up to a few double roundings.
let private exampleTol = 1e-12

let private numericGradient (f: float[] -> float) (x: float[]) =
    Array.init x.Length (fun i ->
        let h = 1e-5 * max 1.0 (abs x[i])
        let xp = Array.copy x
        let xm = Array.copy x
        xp[i] <- x[i] + h
        xm[i] <- x[i] - h
        (f xp - f xm) / (2.0 * h))

/// Compares an analytic gradient of the scalar function f at x with central differences.
let private expectGradient (what: string) (analytic: float[]) (f: float[] -> float) (x: float[]) =
    Expect.equal analytic.Length x.Length $"{what}: gradient length"
    let numeric = numericGradient f x
    let scale = numeric |> Array.fold (fun m v -> max m (abs v)) 1.0
    let errors = Array.map2 (fun (a: float) n -> abs (a - n)) analytic numeric
    let worst = errors |> Array.indexed |> Array.maxBy snd |> fst
    if errors[worst] / scale > fdTol then
        failtestf "%s: analytic gradient %.9g vs finite differences %.9g at index %d (relative error %.2e > %.0e)"
            what analytic[worst] numeric[worst] worst (errors[worst] / scale) fdTol

let private expectNear (what: string) (expected: float[]) (actual: float[]) =
    Array.iteri2 (fun i (e: float) (a: float) ->
        if abs (e - a) > exampleTol * max 1.0 (abs e) then failtestf "%s: element %d is %.17g, expected %.17g" what i a e) expected actual

let private dot (a: float[]) (b: float[]) = Array.fold2 (fun s (x: float) y -> s + x * y) 0.0 a b
let private normal seed n = Rand.normal seed 1.0 n |> toDouble

let private gemmGradients =
    testList "Gemm" [
        for ta in [ false; true ] do
        for tb in [ false; true ] do
            test $"dA, dB, dC (TransA={ta} TransB={tb}, batch 2, padded leading dims and offsets)" {
                let m, n, k = 3, 4, 2
                let lda = (if ta then m else k) + 2
                let ldb = (if tb then k else n) + 1
                let spec = GemmSpec(m, n, k, ta, tb, 0.7f, -1.3f, 2, lda, ldb, n + 3, 0L, 0L, 0L, 1L, 2L, 3L)
                let ea, eb, ec = Gemm.extents spec
                let a, b, c = normal 1 (ea + 1), normal 2 (eb + 2), normal 3 (ec + 2)
                let dOut = normal 4 c.Length
                let da, db, dc = Gemm.backward spec a b c dOut
                expectGradient "dA" da (fun a' -> dot dOut (Gemm.forward spec a' b c)) a
                expectGradient "dB" db (fun b' -> dot dOut (Gemm.forward spec a b' c)) b
                expectGradient "dC" dc (fun c' -> dot dOut (Gemm.forward spec a b c')) c
            } ]

let private elementwiseGradients =
    testList "Elementwise" [
        test "Add" {
            let a, b, dy = normal 1 7, normal 2 7, normal 3 7
            expectGradient "da" dy (fun a' -> dot dy (Elementwise.add a' b)) a
            expectGradient "db" dy (fun b' -> dot dy (Elementwise.add a b')) b
        }
        test "Mul" {
            let a, b, dy = normal 1 7, normal 2 7, normal 3 7
            let da, db = Elementwise.mulBackward a b dy
            expectGradient "da" da (fun a' -> dot dy (Elementwise.mul a' b)) a
            expectGradient "db" db (fun b' -> dot dy (Elementwise.mul a b')) b
        }
        test "Scale" {
            let x, dy = normal 1 7, normal 3 7
            expectGradient "dx" (Elementwise.scale -0.35 dy) (fun x' -> dot dy (Elementwise.scale -0.35 x')) x
        }
        test "Axpy" {
            let x, y, dy = normal 1 7, normal 2 7, normal 3 7
            expectGradient "dx" (Elementwise.scale 1.7 dy) (fun x' -> dot dy (Elementwise.axpy 1.7 x' y)) x
            expectGradient "dy (input y)" dy (fun y' -> dot dy (Elementwise.axpy 1.7 x y')) y
        }
        testList "Unary" [
            for op in [ UnaryOp.Silu; UnaryOp.Sigmoid; UnaryOp.Softplus; UnaryOp.Exp; UnaryOp.Log ] ->
                test $"{op}" {
                    let x = if op = UnaryOp.Log then Rand.uniform 5 0.2 4.0 9 |> toDouble else Rand.normal 5 3.0 9 |> toDouble
                    let dy = normal 6 9
                    expectGradient "dx" (Elementwise.unaryBackward op x dy) (fun x' -> dot dy (Elementwise.unary op x')) x
                } ]
        test "SwiGlu" {
            let a, b, dy = Rand.normal 1 3.0 9 |> toDouble, normal 2 9, normal 3 9
            let da, db = Elementwise.swiGluBackward a b dy
            expectGradient "da" da (fun a' -> dot dy (Elementwise.swiGlu a' b)) a
            expectGradient "db" db (fun b' -> dot dy (Elementwise.swiGlu a b')) b
        } ]

let private normGradients =
    testList "Norm" [
        test "RmsNorm dx, dw" {
            let rows, c, eps = 3, 5, 1e-5
            let x, w, dy = normal 1 (rows * c), normal 2 c, normal 3 (rows * c)
            let dx, dw = Norm.rmsNormBackward dy x w eps
            expectGradient "dx" dx (fun x' -> dot dy (fst (Norm.rmsNorm x' w eps))) x
            expectGradient "dw" dw (fun w' -> dot dy (fst (Norm.rmsNorm x w' eps))) w
        }
        test "L2Norm dx" {
            let cols, eps = 6, 1e-6
            let x, dy = normal 1 (4 * cols), normal 3 (4 * cols)
            let y, rstd = Norm.l2Norm x cols eps
            expectGradient "dx" (Norm.l2NormBackward dy y rstd cols) (fun x' -> dot dy (fst (Norm.l2Norm x' cols eps))) x
        } ]

let private ropeGradients =
    testList "Rope" [
        for layout in [ RopeLayout.HalfSplit; RopeLayout.Adjacent ] do
        for inverse in [ false; true ] ->
            test $"{layout} inverse={inverse} dx" {
                let shape = (2, 3, 2, 6)
                let struct (cos, sin) = RopeTables.Build(3, 6, 10.0)
                let cos, sin = toDouble cos, toDouble sin
                let x, dy = normal 1 72, normal 2 72
                expectGradient "dx" (Rope.backward layout inverse shape dy cos sin) (fun x' -> dot dy (Rope.apply layout inverse shape x' cos sin)) x
            } ]

let private embeddingGradients =
    test "Embedding dtable (repeated ids)" {
        let v, d = 5, 3
        let ids = [| 4; 0; 4; 2; 4 |]
        let table, dy = normal 1 (v * d), normal 2 (ids.Length * d)
        let dtable = Embedding.scatterAdd ids dy d (Array.zeroCreate (v * d))
        expectGradient "dtable" dtable (fun t' -> dot dy (Embedding.gather t' d ids)) table
    }

let private lossGradients =
    testList "Loss" [
        test "Softmax dx" {
            let cols = 5
            let x, dy = Rand.normal 1 2.0 (3 * cols) |> toDouble, normal 2 (3 * cols)
            let y = Loss.softmax x cols
            expectGradient "dx" (Loss.softmaxBackward y dy cols) (fun x' -> dot dy (Loss.softmax x' cols)) x
        }
        test "CrossEntropy dlogits (an ignored row, gradScale 0.37)" {
            let v = 6
            let targets = [| 2; -1; 5; 0 |]
            let z = Rand.normal 1 2.0 (targets.Length * v) |> toDouble
            let _, dz = Loss.crossEntropy z targets v 0.37
            expectGradient "dlogits" dz (fun z' -> 0.37 * Array.sum (fst (Loss.crossEntropy z' targets v 0.37))) z
        }
        test "KlDivergence dstudent (gradScale 0.37)" {
            let v = 6
            let t, s = Rand.normal 1 2.0 (3 * v) |> toDouble, Rand.normal 2 2.0 (3 * v) |> toDouble
            let _, ds = Loss.klDivergence t s v 0.37
            expectGradient "dstudent" ds (fun s' -> 0.37 * Array.sum (fst (Loss.klDivergence t s' v 0.37))) s
        } ]

let private reduceGradients =
    testList "Reduce" [
        for op in [ ReduceOp.Sum; ReduceOp.Mean; ReduceOp.SumOfSquares; ReduceOp.MaxAbs ] ->
            test $"{op}" {
                let x = normal 1 11
                expectGradient "dx" (Optim.reduceBackward op x 1.3) (fun x' -> 1.3 * Optim.reduce op x') x
            } ]

let private workedExamples =
    testList "worked examples" [
        test "Gemm 2x2 (and α, β, TransB)" {
            let a, b, c = [| 1.0; 2.0; 3.0; 4.0 |], [| 5.0; 6.0; 7.0; 8.0 |], [| 1.0; 1.0; 1.0; 1.0 |]
            expectNear "NN" [| 19.0; 22.0; 43.0; 50.0 |] (Gemm.forward (GemmSpec(2, 2, 2)) a b c)
            expectNear "NT, α=2, β=-1" [| 33.0; 45.0; 77.0; 105.0 |] (Gemm.forward (GemmSpec(2, 2, 2, false, true, 2.0f, -1.0f)) a b c)
        }
        test "Gemm batch stride, offsets and untouched padding" {
            // batch 2 of 1x1x2 products with lda = 3 (one padding element per row), C at offset 1, stride 2
            let spec = GemmSpec(1, 1, 2, Batch = 2, Lda = 3, StrideA = 3L, OffsetC = 1L, StrideC = 2L)
            let a = [| 1.0; 2.0; 99.0; 3.0; 4.0; 99.0 |]
            let b = [| 10.0; 100.0; 1000.0; 10000.0 |]
            expectNear "C" [| -1.0; 210.0; -1.0; 43000.0 |] (Gemm.forward spec a b [| -1.0; 7.0; -1.0; 7.0 |])
        }
        test "softmax rows sum to 1; cross-entropy of equal logits is ln V; KL(p‖p) = 0" {
            let y = Loss.softmax (normal 1 20) 5
            expectNear "row sums" (Array.create 4 1.0) (Array.chunkBySize 5 y |> Array.map Array.sum)
            let loss, _ = Loss.crossEntropy (Array.create 14 0.5) [| 3; -1 |] 7 1.0
            expectNear "CE" [| log 7.0; 0.0 |] loss
            let z = normal 2 14
            expectNear "KL" [| 0.0; 0.0 |] (fst (Loss.klDivergence z z 7 1.0))
        }
        test "RoPE: inverse undoes forward; HalfSplit and Adjacent agree after permuting" {
            let shape = (1, 4, 2, 8)
            // angles in double (the float32 tables are not exactly on the unit circle)
            let inv = RopeTables.InverseFrequencies(8, 10000.0)
            let cos = Array.init 16 (fun i -> Math.Cos(float (i / 4) * inv[i % 4]))
            let sin = Array.init 16 (fun i -> Math.Sin(float (i / 4) * inv[i % 4]))
            let x = normal 1 64
            expectNear "round trip" x (Rope.apply RopeLayout.HalfSplit true shape (Rope.apply RopeLayout.HalfSplit false shape x cos sin) cos sin)
            // position 0 has angle 0: identity
            let y = Rope.apply RopeLayout.Adjacent false shape x cos sin
            expectNear "position 0" x[0..15] y[0..15]
            // interleaving the halves turns one layout into the other
            let perm = Array.init 64 (fun i -> let head, j = i / 8 * 8, i % 8 in head + (if j % 2 = 0 then j / 2 else 4 + j / 2))
            let adj = Rope.apply RopeLayout.Adjacent false shape (Array.map (fun p -> x[p]) perm) cos sin
            let half = Rope.apply RopeLayout.HalfSplit false shape x cos sin
            expectNear "layouts" (Array.map (fun p -> half[p]) perm) adj
        }
        test "RmsNorm and L2 norm of a constant row" {
            let y, r = Norm.rmsNorm (Array.create 4 2.0) (Array.create 4 1.0) 0.0
            expectNear "rms y" (Array.create 4 1.0) y
            expectNear "rms rstd" [| 0.5 |] r
            let y2, r2 = Norm.l2Norm (Array.create 4 2.0) 4 0.0
            expectNear "l2 y" (Array.create 4 0.5) y2
            expectNear "l2 rstd" [| 0.25 |] r2
        }
        test "AdamW step 1 without weight decay moves each parameter by lr·g/(|g| + eps)" {
            let spec = AdamWSpec(0.1f, 1, 0.0f, 0.9f, 0.999f, 1e-8f)
            let p, g = [| 1.0; -2.0; 0.5 |], [| 0.25; -3.0; 1e-3 |]
            let p', m', v' = Optim.adamW spec p g (Array.zeroCreate 3) (Array.zeroCreate 3)
            let lr = float 0.1f
            expectNear "param" (Array.map2 (fun pv gv -> pv - lr * gv / (abs gv + float 1e-8f)) p g) p'
            expectNear "m" (g |> Array.map (fun gv -> (1.0 - float 0.9f) * gv)) m'
            expectNear "v" (g |> Array.map (fun gv -> (1.0 - float 0.999f) * gv * gv)) v'
        }
        test "clipping scales by maxNorm/(N + 1e-6) only above maxNorm" {
            let n, clipped = Optim.clipGradNorm [ [| 3.0 |]; [| 0.0; 4.0 |] ] 1.0
            expectNear "N" [| 5.0 |] [| n |]
            expectNear "scaled" [| 3.0 / 5.000001; 0.0; 4.0 / 5.000001 |] (Array.concat clipped)
            let _, kept = Optim.clipGradNorm [ [| 3.0 |]; [| 0.0; 4.0 |] ] 5.5
            expectNear "kept" [| 3.0; 0.0; 4.0 |] (Array.concat kept)
        }
        test "reductions" {
            let x = [| 1.0; -4.0; 2.5 |]
            expectNear "sum, mean, sum of squares, max abs"
                [| -0.5; -0.5 / 3.0; 23.25; 4.0; 0.0 |]
                [| Optim.reduce ReduceOp.Sum x; Optim.reduce ReduceOp.Mean x; Optim.reduce ReduceOp.SumOfSquares x
                   Optim.reduce ReduceOp.MaxAbs x; Optim.reduce ReduceOp.MaxAbs [||] |]
        } ]

[<Tests>]
let tests =
    testList "Reference" [
        testList "gradients vs finite differences" [
            gemmGradients; elementwiseGradients; normGradients; ropeGradients; embeddingGradients; lossGradients; reduceGradients ]
        workedExamples ]
