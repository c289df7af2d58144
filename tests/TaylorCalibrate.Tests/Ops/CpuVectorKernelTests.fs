/// The 512-bit forms of the CPU backend's non-GEMM kernels against their 256-bit and scalar forms, one kernel
/// at a time: the fixed-order reductions and the shifted exponential (Cpu/Simd.cs), AdamW's chunk step, the
/// exponential rows of flash attention and of the chunked gated delta rule, and pass B of the recurrent
/// backward. Where a form is built to give the same bits (elementwise steps; each element's exp goes through
/// the same vector or scalar exp in both widths) the comparison is exact; sums over lanes are compared with
/// the fp32 bound of two summation orders, 2·n·2^-24·Σ|terms|. The 512-bit forms are skipped, with the
/// reason, where 512-bit vectors are not accelerated.
module TaylorCalibrate.Tests.Ops.CpuVectorKernelTests

#nowarn "9"

open System
open Microsoft.FSharp.NativeInterop
open Expecto
open TaylorCalibrate.Backend.Cpu
open TaylorCalibrate.Tests

let private widths = [ false; true ]

let private requireWidth wide =
    if wide && not (CpuVectorWidths.IsSupported CpuVectorWidth.Avx512) then
        skiptest "512-bit vectors are not accelerated here (no AVX-512, or DOTNET_PreferredVectorBitWidth < 512); skipped"

let private label wide = if wide then "512-bit" else "256-bit"

/// Lengths around every vector step (8, 16, 32) and their tails.
let private lengths = [ 0; 1; 7; 8; 9; 15; 16; 17; 31; 32; 33; 47; 64; 100; 1037 ]

/// Two fp32 sums of the same n terms in different orders differ by at most 2·n·2^-24·Σ|terms|.
let private sumBound (n: int) (absSum: float) = 2.0 * float (max n 1) * 5.96e-8 * absSum + 1e-30

/// A vector exp and MathF.Exp differ by a few units in the last place; 4 ulp = 2^-21 relative.
let private expRel = 4.8e-7

let private expectWithin (bound: float) (expected: float32) (actual: float32) what =
    if not (abs (float expected - float actual) <= bound) then
        failtestf "%s: %.9g vs %.9g, |Δ| %.3e > %.3e" what expected actual (abs (float expected - float actual)) bound

[<Tests>]
let tests =
    testList "CpuVectorKernel" [
        for wide in widths do
            test $"{label wide} Sum, Dot, Max, MaxAbs against their scalar loops" {
                requireWidth wide
                for n in lengths do
                    let x = Rand.uniform (n + 1) -3.0 3.0 n
                    let y = Rand.uniform (n + 2) -3.0 3.0 n
                    let mutable s, d = 0.0f, 0.0f
                    for i in 0 .. n - 1 do
                        s <- s + x[i]
                        d <- d + x[i] * y[i]
                    let absX = x |> Array.sumBy (fun v -> abs (float v))
                    let absXY = Array.map2 (fun a b -> abs (float a * float b)) x y |> Array.sum
                    expectWithin (sumBound n absX) s (Simd.Sum(ReadOnlySpan x, wide)) $"Sum n={n}"
                    expectWithin (sumBound n absXY) d (Simd.Dot(ReadOnlySpan x, ReadOnlySpan y, wide)) $"Dot n={n}"
                    let mx = if n = 0 then Single.NegativeInfinity else Array.max x
                    let ma = if n = 0 then 0.0f else x |> Array.map abs |> Array.max
                    Expect.equal (Simd.Max(ReadOnlySpan x, wide)) mx $"Max n={n} (exact)"
                    Expect.equal (Simd.MaxAbs(ReadOnlySpan x, wide)) ma $"MaxAbs n={n} (exact)"
            }
            test $"{label wide} ExpShiftedSum against its scalar loop" {
                requireWidth wide
                for n in lengths do
                    let x = Rand.uniform (n + 3) -20.0 5.0 n
                    let m = 5.0f
                    let dst = Array.zeroCreate<float32> n
                    let sum = Simd.ExpShiftedSum(ReadOnlySpan x, m, Span dst, wide)
                    let spec = x |> Array.map (fun v -> MathF.Exp(v - m))
                    for i in 0 .. n - 1 do expectWithin (expRel * float spec[i]) spec[i] dst[i] $"e^(x−m)[{i}] n={n}"
                    let specSum = Array.fold (+) 0.0f spec
                    expectWithin (sumBound n (float specSum) + expRel * float specSum) specSum sum $"Σ n={n}"
            }
        for wide in widths do
            test $"{label wide} ScaledExpShifted (the cross-entropy gradient's softmax) against its scalar loop" {
                requireWidth wide
                for n in lengths do
                    let x = Rand.uniform (n + 13) -20.0 5.0 n
                    let dst = Array.zeroCreate<float32> n
                    Simd.ScaledExpShifted(ReadOnlySpan x, 5.0f, 0.25f, Span dst, wide)
                    for i in 0 .. n - 1 do
                        let spec = 0.25f * MathF.Exp(x[i] - 5.0f)
                        expectWithin (2.0 * expRel * float spec) spec dst[i] $"[{i}] n={n}"
                    if wide then
                        let narrow = Array.zeroCreate<float32> n
                        Simd.ScaledExpShifted(ReadOnlySpan x, 5.0f, 0.25f, Span narrow, false)
                        Numeric.bitEqual narrow dst $"512 vs 256-bit, n={n}"
            }
        for wide in widths do
            test $"{label wide} Exp and Sigmoid against their scalar loops" {
                requireWidth wide
                for n in lengths do
                    let x = Rand.uniform (n + 17) -30.0 30.0 n
                    if n > 2 then
                        x[0] <- Single.NegativeInfinity
                        x[1] <- Single.PositiveInfinity
                    let e, s = Array.zeroCreate<float32> n, Array.zeroCreate<float32> n
                    Simd.Exp(ReadOnlySpan x, Span e, wide)
                    Simd.Sigmoid(ReadOnlySpan x, Span s, wide)
                    for i in 0 .. n - 1 do
                        let se = MathF.Exp x[i]
                        let ss = 1.0f / (1.0f + MathF.Exp(-x[i]))
                        if Single.IsInfinity se || se = 0.0f then Expect.equal e[i] se $"e^x[{i}] = {se} exactly"
                        else expectWithin (expRel * float se) se e[i] $"e^x[{i}] n={n}"
                        // σ = 1/(1 + e^−x): the exp's relative error, damped by the division, plus one rounding
                        expectWithin (2.0 * expRel * float ss + 1e-45) ss s[i] $"σ(x)[{i}] n={n}"
                    if wide then
                        let e2, s2 = Array.zeroCreate<float32> n, Array.zeroCreate<float32> n
                        Simd.Exp(ReadOnlySpan x, Span e2, false)
                        Simd.Sigmoid(ReadOnlySpan x, Span s2, false)
                        Numeric.bitEqual e2 e $"Exp 512 vs 256-bit, n={n}"
                        Numeric.bitEqual s2 s $"Sigmoid 512 vs 256-bit, n={n}"
            }
        test "ExpShiftedSum: both widths give the same exponentials bit for bit" {
            requireWidth true
            for n in lengths do
                let x = Rand.uniform (n + 4) -20.0 5.0 n
                let run wide =
                    let dst = Array.zeroCreate<float32> n
                    Simd.ExpShiftedSum(ReadOnlySpan x, 1.0f, Span dst, wide) |> ignore
                    dst
                Numeric.bitEqual (run false) (run true) $"n={n}"
        }
        test "AdamW chunk (256-bit blocks) equals its scalar step exactly" {
            for n in [ 1; 7; 8; 15; 16; 17; 33; 100 ] do
                let g = Rand.uniform (n + 5) -1.0 1.0 n
                let init () = Rand.uniform (n + 6) -1.0 1.0 n, Rand.uniform (n + 7) -0.1 0.1 n, Rand.uniform (n + 8) 0.0 0.01 n
                let step (p: float32[]) (m: float32[]) (v: float32[]) (i0: int) (len: int) =
                    CpuBackend.AdamWChunk(Span(p, i0, len), ReadOnlySpan(g, i0, len), Span(m, i0, len), Span(v, i0, len),
                                          1e-3f, 0.9f, 0.999f, 1e-8f, 1.0f - 1e-5f, 1.5f, 2.5f)
                let p1, m1, v1 = init ()
                step p1 m1 v1 0 n
                let p0, m0, v0 = init ()
                for i in 0 .. n - 1 do step p0 m0 v0 i 1     // one element at a time: the scalar loop
                Numeric.bitEqual p0 p1 $"param n={n}"
                Numeric.bitEqual m0 m1 $"m n={n}"
                Numeric.bitEqual v0 v1 $"v n={n}"
        }
        test "attention forward row (exp and its three sums): the 512-bit form against the 256-bit and scalar ones" {
            requireWidth true
            for n in [ 1; 7; 8; 9; 16; 23; 24; 40; 63; 64 ] do
            for valid in List.distinct [ 0; 1; n / 2; n - 1; n ] do
                let s0 = Rand.uniform (n * 7 + valid) -6.0 2.0 n
                let m, off = 2.0f, valid + 3
                let run wide =
                    let s = Array.copy s0
                    use ps = fixed s
                    let mutable a, b, c = 0.0f, 0.0f, 0.0f
                    if wide then FlashAttention.ExpRowWide(ps, valid, n, m, off, &a, &b, &c)
                    else FlashAttention.ExpRow(ps, valid, n, m, off, &a, &b, &c)
                    s, a, b, c
                let sw, pw, dw, xw = run true
                let sn, pn, dn, xn = run false
                Numeric.bitEqual sn sw $"p, n={n} valid={valid}"
                // the scalar specification
                let p = Array.init n (fun c -> if c < valid then MathF.Exp(s0[c] - m) else 0.0f)
                for c in 0 .. n - 1 do expectWithin (expRel * float p[c]) p[c] sw[c] $"p[{c}] n={n} valid={valid}"
                let dist c = MathF.Max(float32 (off - c), 0.5f)
                let terms f = Array.init valid (fun c -> float (f c)) 
                let sp, sd, sx = terms (fun c -> p[c]), terms (fun c -> p[c] * dist c), terms (fun c -> p[c] * s0[c])
                let bound (t: float[]) = sumBound valid (t |> Array.sumBy abs) + 2.0 * expRel * (t |> Array.sumBy abs)
                for (name, t, w, nn) in [ "Σp", sp, pw, pn; "Σp·dist", sd, dw, dn; "Σp·s", sx, xw, xn ] do
                    expectWithin (bound t) (float32 (Array.sum t)) w $"{name} 512-bit n={n} valid={valid}"
                    expectWithin (2.0 * bound t) nn w $"{name} 512 vs 256-bit n={n} valid={valid}"
        }
        test "attention backward row (P and dS): the 512-bit form equals the 256-bit one and matches the scalar spec" {
            requireWidth true
            for n in [ 1; 7; 8; 9; 16; 23; 24; 40; 63; 64 ] do
            for valid in List.distinct [ 0; 1; n / 2; n - 1; n ] do
                let s0 = Rand.uniform (n * 5 + valid) -6.0 2.0 n
                let dp0 = Rand.uniform (n * 3 + valid) -1.0 1.0 n
                let lse, delta = 2.5f, 0.3f
                let run wide =
                    let s, dp = Array.copy s0, Array.copy dp0
                    use ps = fixed s
                    use pd = fixed dp
                    FlashAttention.ProbsAndScoreGradsRow(ps, pd, valid, n, lse, delta, wide)
                    s, dp
                let sw, dpw = run true
                let sn, dpn = run false
                Numeric.bitEqual sn sw $"P, n={n} valid={valid}"
                Numeric.bitEqual dpn dpw $"dS, n={n} valid={valid}"
                for c in 0 .. n - 1 do
                    let p = if c < valid then MathF.Exp(s0[c] - lse) else 0.0f
                    let ds = if c < valid then p * (dp0[c] - delta) else 0.0f
                    expectWithin (expRel * float p) p sw[c] $"P[{c}] n={n} valid={valid}"
                    expectWithin (expRel * abs (float ds) + 1e-30) ds dpw[c] $"dS[{c}] n={n} valid={valid}"
        }
        test "chunked GDN decay row: the 512-bit form equals the 256-bit one and matches the scalar spec" {
            requireWidth true
            for count in [ 0; 1; 7; 8; 15; 16; 17; 33; 48; 63; 64 ] do
                let x0 = Rand.uniform (count + 11) -1.0 1.0 64
                let gam = Rand.uniform (count + 12) -3.0 0.0 64
                let gr = 0.5f
                let run wide =
                    let x = Array.copy x0
                    use px = fixed x
                    use pg = fixed gam
                    GdnChunked.DecayRow(px, pg, gr, count, 0.7f, wide)
                    x
                let w, nn = run true, run false
                Numeric.bitEqual nn w $"count={count}"
                for j in 0 .. 63 do
                    let spec = if j < count then x0[j] * (0.7f * MathF.Exp(gr - gam[j])) else x0[j]
                    expectWithin (2.0 * expRel * abs (float spec) + 1e-30) spec w[j] $"x[{j}] count={count}"
        }
        test "chunked GDN backward exp row e^(γ_r−γ_j): the 512-bit form equals the 256-bit one and matches the scalar spec" {
            requireWidth true
            for count in [ 0; 1; 7; 8; 15; 16; 17; 33; 48; 63; 64 ] do
                let gam = Rand.uniform (count + 21) -3.0 0.0 64
                let run wide =
                    let e = Array.zeroCreate<float32> 64
                    use pg = fixed gam
                    use pe = fixed e
                    GdnChunked.ExpDiffRow(pg, 0.25f, count, pe, wide)
                    e
                let w, nn = run true, run false
                Numeric.bitEqual nn w $"count={count}"
                for j in 0 .. count - 1 do
                    let spec = MathF.Exp(0.25f - gam[j])
                    expectWithin (expRel * float spec) spec w[j] $"e[{j}] count={count}"
        }
        test "recurrent GDN backward pass B: the 512-bit pair form against the row form (rounding only)" {
            requireWidth true
            for k in [ 2; 3; 17; 64 ] do
            for v in [ 16; 48; 64; 128 ] do
                let prev = Rand.uniform (k * v) -1.0 1.0 (k * v)
                let dS0 = Rand.uniform (k * v + 1) -1.0 1.0 (k * v)
                let q, kk = Rand.uniform 3 -1.0 1.0 k, Rand.uniform 4 -1.0 1.0 k
                let dO, u, du = Rand.uniform 5 -1.0 1.0 v, Rand.uniform 6 -1.0 1.0 v, Rand.uniform 7 -1.0 1.0 v
                let decay, scale, beta, udo = 0.9f, 0.125f, 0.6f, 0.37f
                let pairs = k - k % 2
                // the 512-bit pair form over rows [0, pairs)
                let dSw, dkw, dqw = Array.copy dS0, Array.zeroCreate<float32> k, Array.zeroCreate<float32> k
                let dgw =
                    use pp = fixed prev
                    use pd = fixed dSw
                    use pq = fixed q
                    use pk = fixed kk
                    use po = fixed dO
                    use pu = fixed u
                    use pdu = fixed du
                    use pdk = fixed dkw
                    use pdq = fixed dqw
                    GdnRecurrent.PassB2Wide(pp, pd, pairs, v, decay, scale, beta, pq, pk, po, pu, pdu, udo, pdk, pdq)
                // the row form, the reference of both pair forms
                let dSr, dkr, dqr = Array.copy dS0, Array.zeroCreate<float32> k, Array.zeroCreate<float32> k
                let row i =
                    use pp = fixed prev
                    use pd = fixed dSr
                    use po = fixed dO
                    use pu = fixed u
                    use pdu = fixed du
                    let mutable dSu, spdu, spdsp, pdo = 0.0f, 0.0f, 0.0f, 0.0f
                    GdnRecurrent.PassB(NativePtr.add pp (i * v), NativePtr.add pd (i * v), decay, scale * q[i], beta * kk[i],
                                       po, pu, pdu, v, &dSu, &spdu, &spdsp, &pdo)
                    dSu, spdu, spdsp, pdo
                let mutable dgr = 0.0f
                for i in 0 .. pairs - 1 do
                    let dSu, spdu, spdsp, pdo = row i
                    dkr[i] <- dSu - beta * spdu
                    dqr[i] <- scale * (decay * pdo + kk[i] * udo)
                    dgr <- dgr + spdsp
                // Every output is a dot product over v columns (dg over pairs·v terms) of values ≤ ~2 in size.
                let rowBound = sumBound v (4.0 * float v)
                Numeric.bitEqual dSr dSw $"dS′ (elementwise), K={k} V={v}"
                for i in 0 .. pairs - 1 do
                    expectWithin (2.0 * rowBound) dkr[i] dkw[i] $"dk[{i}] K={k} V={v}"
                    expectWithin (2.0 * rowBound) dqr[i] dqw[i] $"dq[{i}] K={k} V={v}"
                expectWithin (sumBound (pairs * v) (4.0 * float (pairs * v))) dgr dgw $"dg K={k} V={v}"
        }
    ]
