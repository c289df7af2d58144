/// The vector width of the CPU backend's non-GEMM kernels (Backend/Cpu/VectorWidth.cs), op by op: TC_CPU_SIMD
/// and the backend's description; every op that has a 512-bit form run on a 256-bit and a 512-bit backend
/// (the op tests against the f64 references run in the default width, so this is what checks the other);
/// and, in each width, the same bits for 1 and 3 threads. Ops built to give the same bits in both widths
/// (elementwise ops, attention backward, the chunked gated delta rule, the recurrent forward, AdamW) are
/// compared exactly;
/// the others sum over 16 lanes instead of 8, and are compared within the fp32 budget of those sums.
module TaylorCalibrate.Tests.Ops.CpuVectorWidthTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Cpu
open TaylorCalibrate.Tests

let private requireWide () =
    if not (CpuVectorWidths.IsSupported CpuVectorWidth.Avx512) then
        skiptest "512-bit vectors are not accelerated here (no AVX-512, or DOTNET_PreferredVectorBitWidth < 512); skipped"

/// One op on a backend: uploads its inputs, runs it, returns every output as host arrays.
type private Op = IBackend -> float32[] list

let private rmsNorm: Op = fun be ->
    let rows, cols = 37, 1031
    use x = be.FromArray(Rand.uniform 1 -2.0 2.0 (rows * cols), rows, cols)
    use w = be.FromArray(Rand.uniform 2 0.5 1.5 cols, cols)
    use dy = be.FromArray(Rand.uniform 3 -1.0 1.0 (rows * cols), rows, cols)
    use y = be.Allocate [| rows; cols |]
    use rstd = be.Allocate [| rows |]
    use dx = be.Allocate [| rows; cols |]
    use dw = be.Allocate [| cols |]
    be.RmsNorm(x, w, y, rstd, 1e-5f)
    be.RmsNormBackward(dy, x, w, rstd, dx, dw)
    [ y.ToArray(); rstd.ToArray(); dx.ToArray(); dw.ToArray() ]

let private softmax: Op = fun be ->
    let rows, cols = 29, 1043
    use x = be.FromArray(Rand.uniform 4 -8.0 8.0 (rows * cols), rows, cols)
    use dy = be.FromArray(Rand.uniform 5 -1.0 1.0 (rows * cols), rows, cols)
    use y = be.Allocate [| rows; cols |]
    use dx = be.Allocate [| rows; cols |]
    be.Softmax(x, y, cols)
    be.SoftmaxBackward(y, dy, dx, cols)
    [ y.ToArray(); dx.ToArray() ]

let private losses: Op = fun be ->
    let rows, vocab = 13, 2500          // more than two 1024-wide vocabulary blocks, with a tail
    use zt = be.FromArray(Rand.uniform 6 -8.0 8.0 (rows * vocab), rows, vocab)
    use zs = be.FromArray(Rand.uniform 7 -8.0 8.0 (rows * vocab), rows, vocab)
    use t = be.FromInts(Rand.ints 8 vocab rows, rows)
    use ce = be.Allocate [| rows |]
    use kl = be.Allocate [| rows |]
    use dce = be.Allocate [| rows; vocab |]
    use dkl = be.Allocate [| rows; vocab |]
    be.CrossEntropy(zs, t, ce, dce, 0.5f)
    be.KlDivergence(zt, zs, kl, dkl, 0.5f)
    [ ce.ToArray(); dce.ToArray(); kl.ToArray(); dkl.ToArray() ]

let private elementwise: Op = fun be ->
    let n = 10_007
    use a = be.FromArray(Rand.uniform 30 -30.0 30.0 n, n)
    use b = be.FromArray(Rand.uniform 31 -1.0 1.0 n, n)
    use dy = be.FromArray(Rand.uniform 32 -1.0 1.0 n, n)
    [ use y = be.Allocate [| n |]
      use da = be.Allocate [| n |]
      use db = be.Allocate [| n |]
      be.SwiGlu(a, b, y)
      be.SwiGluBackward(a, b, dy, da, db)
      yield y.ToArray(); yield da.ToArray(); yield db.ToArray()
      for op in [ UnaryOp.Exp; UnaryOp.Sigmoid; UnaryOp.Silu; UnaryOp.Softplus ] do
          use u = be.Allocate [| n |]
          use du = be.Allocate [| n |]
          be.Unary(op, a, u)
          be.UnaryBackward(op, a, dy, du)
          yield u.ToArray()
          yield du.ToArray() ]

let private reductions: Op = fun be ->
    use x = be.FromArray(Rand.uniform 9 -1.0 1.0 40_001, 40_001)
    [ for op in [ ReduceOp.Sum; ReduceOp.SumOfSquares; ReduceOp.MaxAbs ] ->
        use r = be.Allocate [| 1 |]
        be.Reduce(op, x, r)
        r.ToArray() ]

let private adamW: Op = fun be ->
    let n = 20_011
    use p = be.FromArray(Rand.uniform 10 -1.0 1.0 n, n)
    use g = be.FromArray(Rand.uniform 11 -1.0 1.0 n, n)
    use m = be.FromArray(Rand.uniform 12 -0.1 0.1 n, n)
    use v = be.FromArray(Rand.uniform 13 0.0 0.01 n, n)
    be.AdamW(p, g, m, v, AdamWSpec(1e-3f, 7))
    [ p.ToArray(); m.ToArray(); v.ToArray() ]

/// Attention forward outputs, and the backward from fixed (o, lse) so both widths differentiate the same thing.
let private attention (d: int) : Op * Op =
    let b, t, h, hkv = 2, 131, 4, 2
    let inputs (be: IBackend) =
        be.FromArray(Rand.uniform 14 -1.0 1.0 (b * t * h * d), b, t, h, d),
        be.FromArray(Rand.uniform 15 -1.0 1.0 (b * t * hkv * d), b, t, hkv, d),
        be.FromArray(Rand.uniform 16 -1.0 1.0 (b * t * hkv * d), b, t, hkv, d)
    let scale = 1.0f / sqrt (float32 d)
    let forward: Op = fun be ->
        let q, k, v = inputs be
        use o = be.Allocate [| b; t; h; d |]
        use lse = be.Allocate [| b; h; t |]
        be.AttentionForward(q, k, v, o, lse, scale)
        for x in [ q; k; v ] do x.Dispose()
        [ o.ToArray(); lse.ToArray() ]
    let reference = lazy (forward (new CpuBackend(1, CpuVectorWidth.Avx2)))
    let backward: Op = fun be ->
        let q, k, v = inputs be
        let oRef, lseRef = match reference.Value with [ o; l ] -> o, l | _ -> failwith "two outputs"
        use o = be.FromArray(oRef, b, t, h, d)
        use lse = be.FromArray(lseRef, b, h, t)
        use dO = be.FromArray(Rand.uniform 17 -1.0 1.0 (b * t * h * d), b, t, h, d)
        use dq = be.Allocate q.Shape
        use dk = be.Allocate k.Shape
        use dv = be.Allocate v.Shape
        be.AttentionBackward(q, k, v, o, lse, dO, dq, dk, dv, scale)
        for x in [ q; k; v ] do x.Dispose()
        [ dq.ToArray(); dk.ToArray(); dv.ToArray() ]
    forward, backward

let private gdn (mode: GdnMode) (kd: int) (vd: int) (backward: bool) : Op = fun be ->
    let b, t, h = 1, 150, 3            // two full chunks of 64 and a partial one
    use q = be.FromArray(Rand.uniform 20 -1.0 1.0 (b * t * h * kd), b, t, h, kd)
    use k = be.FromArray(Rand.uniform 21 -1.0 1.0 (b * t * h * kd), b, t, h, kd)
    use v = be.FromArray(Rand.uniform 22 -1.0 1.0 (b * t * h * vd), b, t, h, vd)
    use g = be.FromArray(Rand.uniform 23 -0.3 -0.001 (b * t * h), b, t, h)
    use beta = be.FromArray(Rand.uniform 24 0.05 0.95 (b * t * h), b, t, h)
    use o = be.Allocate [| b; t; h; vd |]
    let spec = GdnSpec(1.0f / sqrt (float32 kd), true, mode, 64)
    be.GdnForward(q, k, v, g, beta, null, o, null, spec)
    if not backward then [ o.ToArray() ]
    else
        use dO = be.FromArray(Rand.uniform 25 -1.0 1.0 (b * t * h * vd), b, t, h, vd)
        use dq = be.Allocate q.Shape
        use dk = be.Allocate k.Shape
        use dv = be.Allocate v.Shape
        use dg = be.Allocate g.Shape
        use db = be.Allocate g.Shape
        be.GdnBackward(q, k, v, g, beta, null, dO, null, dq, dk, dv, dg, db, null, spec)
        [ dq.ToArray(); dk.ToArray(); dv.ToArray(); dg.ToArray(); db.ToArray() ]

/// Two fp32 summation orders over up to a few thousand terms: relative RMS ≈ 2^-24·√terms ≤ 1e-5 with room
/// for the exp's few ulp; MaxAbs covers outputs whose reference is ~0 (gradients of tiny probabilities).
let private summationOrder = { Numeric.RelRms = 2e-5; Numeric.MaxAbs = 1e-6 }

let private attnF64, attnB64 = attention 64
let private attnF40, attnB40 = attention 40

/// name, op, whether both widths give the same bits.
let private ops =
    [ "rmsnorm forward+backward", rmsNorm, false
      "softmax forward+backward", softmax, false
      "cross-entropy and KL", losses, false
      "sum, sum of squares, max |x|", reductions, false
      "swiglu and exp, sigmoid, silu, softplus forward+backward", elementwise, true
      "adamw", adamW, true
      "attention forward D=64", attnF64, false
      "attention forward D=40", attnF40, false
      "attention backward D=64", attnB64, true
      "attention backward D=40", attnB40, true
      "gdn chunked forward+backward K=V=64", gdn GdnMode.Chunked 64 64 true, true
      "gdn chunked forward+backward K=48 V=80", gdn GdnMode.Chunked 48 80 true, true
      "gdn recurrent forward K=V=64", gdn GdnMode.Recurrent 64 64 false, true
      "gdn recurrent forward K=48 V=96", gdn GdnMode.Recurrent 48 96 false, true
      "gdn recurrent forward+backward K=V=64", gdn GdnMode.Recurrent 64 64 true, false
      "gdn recurrent forward+backward K=48 V=80", gdn GdnMode.Recurrent 48 80 true, false ]

let private outputs (op: Op) threads width =
    use be = new CpuBackend(threads, width)
    op be

[<Tests>]
let tests =
    testList "CpuVectorWidth" [
        test "TC_CPU_SIMD: avx2 and avx512 pick a width, auto and empty the widest, others are refused" {
            Expect.equal (CpuVectorWidths.Parse null) CpuVectorWidths.Best "unset"
            Expect.equal (CpuVectorWidths.Parse " Auto ") CpuVectorWidths.Best "auto"
            Expect.equal (CpuVectorWidths.Parse "avx2") CpuVectorWidth.Avx2 "avx2"
            if CpuVectorWidths.IsSupported CpuVectorWidth.Avx512 then
                Expect.equal (CpuVectorWidths.Parse "AVX512") CpuVectorWidth.Avx512 "avx512"
                Expect.equal CpuVectorWidths.Best CpuVectorWidth.Avx512 "512-bit vectors accelerated: the widest is the default"
            else
                let e = Expect.throwsC (fun () -> CpuVectorWidths.Parse "avx512" |> ignore) id
                Expect.stringContains e.Message "TC_CPU_SIMD=avx512" "names the variable"
            let e = Expect.throwsC (fun () -> CpuVectorWidths.Parse "sse9" |> ignore) id
            Expect.stringContains e.Message "TC_CPU_SIMD=sse9" "the error names the variable and the value"
        }
        test "a backend reports its width; one built with a width it cannot run is refused" {
            for w in CpuVectorWidths.Supported do
                use be = new CpuBackend(1, w)
                Expect.equal be.VectorWidth w "VectorWidth"
                let bits = if w = CpuVectorWidth.Avx512 then "512" else "256"
                Expect.stringContains be.Info.Details $"{bits}-bit vector kernels" "devices shows the width"
            if not (CpuVectorWidths.IsSupported CpuVectorWidth.Avx512) then
                Expect.throwsT<ArgumentException> (fun () -> new CpuBackend(1, CpuVectorWidth.Avx512) |> ignore) "no 512-bit vectors"
        }
        for name, op, exact in ops do
            let relation = if exact then "equals" else "agrees with"
            test $"{name}: the 512-bit backend {relation} the 256-bit one" {
                requireWide ()
                let narrow = outputs op 2 CpuVectorWidth.Avx2
                let wide = outputs op 2 CpuVectorWidth.Avx512
                for i, (n, w) in List.indexed (List.zip narrow wide) do
                    if exact then Numeric.bitEqual n w $"output {i}"
                    else Numeric.closeTo summationOrder (Numeric.toDouble n) w $"output {i}"
            }
            for w in CpuVectorWidths.Supported do
                test $"{name}, {CpuVectorWidths.Name w}: the same bits for 1 and 3 threads" {
                    let one = outputs op 1 w
                    let three = outputs op 3 w
                    for i, (a, b) in List.indexed (List.zip one three) do Numeric.bitEqual a b $"output {i}"
                }
    ]
