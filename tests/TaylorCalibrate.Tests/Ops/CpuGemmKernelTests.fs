/// The CPU GEMM kernel on its own (Cpu/Gemm/*.cs): every micro-kernel (scalar, Vector<T>, AVX2+FMA 6×16,
/// AVX-512F 12×32) against a naive double loop, over micro-tile tails (M around 6 and 12, N around 16 and 32,
/// K around the 256 block), all transpose flags, α/β, leading dimensions, offsets and batch strides; the
/// split-K path; determinism across thread counts; TC_CPU_GEMM; and the argument checks of CpuBackend.Gemm.
/// A kernel this processor cannot run is reported as a skipped test naming the missing instructions. The cross-backend f64
/// reference tests of every op live in GemmTests.fs and friends.
module TaylorCalibrate.Tests.Ops.CpuGemmKernelTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Cpu
open TaylorCalibrate.Backend.Cpu.Gemm
open TaylorCalibrate.Tests

/// fp32 products summed in fp32 over K ≤ a few thousand terms of U(−½, ½) data: relative RMS error
/// stays near 1e-7·√K; 1e-5 leaves margin without hiding an indexing bug (which gives errors near 1).
let private gemmRelRms = 1e-5
let private gemmMaxAbs = 1e-6

/// C after the spec, computed in double with the spec's indexing written out independently of the kernel.
let private naive (s: GemmSpec) (a: float32[]) (b: float32[]) (c0: float32[]) : float[] =
    let c = Array.map float c0
    let lda, ldb, ldc = int64 s.LdaResolved, int64 s.LdbResolved, int64 s.LdcResolved
    for bi in 0 .. s.Batch - 1 do
        let oa = s.OffsetA + int64 bi * s.StrideAResolved
        let ob = s.OffsetB + int64 bi * s.StrideBResolved
        let oc = s.OffsetC + int64 bi * s.StrideCResolved
        for i in 0 .. s.M - 1 do
            for j in 0 .. s.N - 1 do
                let mutable acc = 0.0
                for k in 0 .. s.K - 1 do
                    let ia = if s.TransA then oa + int64 k * lda + int64 i else oa + int64 i * lda + int64 k
                    let ib = if s.TransB then ob + int64 j * ldb + int64 k else ob + int64 k * ldb + int64 j
                    acc <- acc + float a[int ia] * float b[int ib]
                let ic = int (oc + int64 i * ldc + int64 j)
                c[ic] <- float s.Alpha * acc + (if s.Beta = 0f then 0.0 else float s.Beta * float c0[ic])
    c

/// Random operands sized to the spec's extents (plus slack, so out-of-extent writes would show).
let private operands seed (s: GemmSpec) =
    let a = Rand.uniform seed -0.5 0.5 (int s.ExtentA + 3)
    let b = Rand.uniform (seed + 1) -0.5 0.5 (int s.ExtentB + 5)
    let c = Rand.uniform (seed + 2) -0.5 0.5 (int s.ExtentC + 7)
    a, b, c

/// Runs the kernel directly (no tensors) and compares the whole C array with the naive result.
let private checkKernel (kind: GemmKernelKind) (threads: int) (s: GemmSpec) =
    let a, b, c0 = operands (s.M * 7 + s.N * 13 + s.K) s
    let c = Array.copy c0
    BlockedGemm.Run(a, b, c, s, CpuParallel threads, kind)
    Numeric.close gemmRelRms gemmMaxAbs (naive s a b c0) c $"{kind} {s}"

let private allKinds = [ GemmKernelKind.Scalar; GemmKernelKind.Vector; GemmKernelKind.Avx2Fma; GemmKernelKind.Avx512 ]

let private kinds = allKinds |> List.filter MicroKernels.IsSupported

/// Skips the running test when the processor lacks the kernel's instructions.
let private requireKernel (kind: GemmKernelKind) =
    if not (MicroKernels.IsSupported kind) then
        let lacks =
            match kind with
            | GemmKernelKind.Avx512 -> "AVX-512F"
            | GemmKernelKind.Avx2Fma -> "AVX2 and FMA"
            | _ -> $"a Vector<float> width dividing {MicroKernels.NR}"
        skiptest $"{kind}: this processor lacks {lacks}; skipped"

let private flags = [ false, false; true, false; false, true; true, true ]

[<Tests>]
let tests =
    testList "CpuGemmKernel" [
        // Tails: M around the 6- and 12-row micro-tiles, N around the 16- and 32-column ones, K around the
        // 256 block.
        for kind in allKinds do
            test $"{kind}: micro-tile tails, every transpose, alpha and beta" {
                requireKernel kind
                for m in [ 1; 5; 6; 7; 11; 12; 13; 25 ] do
                for n in [ 1; 15; 16; 17; 31; 32; 33; 65 ] do
                for k in [ 1; 3; 257 ] do
                for ta, tb in flags do
                    checkKernel kind 1 (GemmSpec(m, n, k, ta, tb, Alpha = 0.75f, Beta = -0.5f))
            }
            test $"{kind}: blocks of several row and column tasks on two threads" {
                requireKernel kind
                for ta, tb in flags do
                    checkKernel kind 2 (GemmSpec(197, 301, 530, ta, tb, Alpha = 1f, Beta = 1f))
            }
            test $"{kind}: columns beyond one 4096-wide block, K beyond one packing round, split-K" {
                requireKernel kind
                checkKernel kind 2 (GemmSpec(7, 4100, 1100, false, true))
                let s = GemmSpec(37, 21, 5000, true, false, Beta = 1f)
                Expect.isGreaterThan (BlockedGemm.SplitCount(s.M, s.N, s.K)) 1 "this shape takes the split-K path"
                checkKernel kind 2 s
            }
            test $"{kind}: results are bit-identical for 1 and 2 threads (plain and split-K)" {
                requireKernel kind
                for s in [ GemmSpec(200, 130, 700); GemmSpec(301, 77, 600, false, true); GemmSpec(64, 64, 4096, true, false) ] do
                    let a, b, c0 = operands 5 s
                    let c1, c2 = Array.copy c0, Array.copy c0
                    BlockedGemm.Run(a, b, c1, s, CpuParallel 1, kind)
                    BlockedGemm.Run(a, b, c2, s, CpuParallel 2, kind)
                    Expect.sequenceEqual c2 c1 $"{s}"
            }
            test $"{kind}: leading dimensions, offsets and batch strides" {
                requireKernel kind
                for ta, tb in flags do
                    let m, n, k = 11, 19, 23
                    let lda = (if ta then m else k) + 3
                    let ldb = (if tb then k else n) + 5
                    let ldc = n + 2
                    let s = GemmSpec(m, n, k, ta, tb, Alpha = 1.5f, Beta = 0.25f, Batch = 3,
                                     Lda = lda, Ldb = ldb, Ldc = ldc,
                                     StrideA = int64 ((if ta then k else m) * lda + 4),
                                     StrideB = int64 ((if tb then n else k) * ldb + 1),
                                     StrideC = int64 (m * ldc + 9),
                                     OffsetA = 2L, OffsetB = 7L, OffsetC = 5L)
                    checkKernel kind 2 s
            }
        test "TC_CPU_GEMM: names pick a kernel, auto and empty pick the best, others are refused" {
            Expect.equal (MicroKernels.Parse null) MicroKernels.Best "unset"
            Expect.equal (MicroKernels.Parse " Auto ") MicroKernels.Best "auto"
            Expect.equal (MicroKernels.Parse "scalar") GemmKernelKind.Scalar "scalar"
            for kind in allKinds do
                let name = MicroKernels.Name kind
                if MicroKernels.IsSupported kind then Expect.equal (MicroKernels.Parse name) kind name
                else Expect.throwsT<ArgumentException> (fun () -> MicroKernels.Parse name |> ignore) $"{name} is not available here"
            let e = Expect.throwsC (fun () -> MicroKernels.Parse "sse9" |> ignore) id
            Expect.stringContains e.Message "TC_CPU_GEMM=sse9" "the error names the variable and the value"
            if MicroKernels.IsSupported GemmKernelKind.Avx512 then Expect.equal MicroKernels.Best GemmKernelKind.Avx512 "AVX-512F present"
            elif MicroKernels.IsSupported GemmKernelKind.Avx2Fma then Expect.equal MicroKernels.Best GemmKernelKind.Avx2Fma "AVX2 present"
        }
        test "beta = 0 never reads C (NaN there does not leak); K = 0 scales C by beta" {
            let s = GemmSpec(9, 18, 5)
            let a, b, _ = operands 3 s
            let c = Array.create (int s.ExtentC) Single.NaN
            BlockedGemm.Run(a, b, c, s, CpuParallel 1, MicroKernels.Best)
            Numeric.close gemmRelRms gemmMaxAbs (naive s a b (Array.zeroCreate c.Length)) c "beta = 0"
            let s0 = GemmSpec(4, 5, 0, Beta = 0.5f)
            let c0 = Array.init 20 float32
            let c = Array.copy c0
            BlockedGemm.Run([||], [||], c, s0, CpuParallel 1, MicroKernels.Best)
            Expect.sequenceEqual c (c0 |> Array.map (fun x -> 0.5f * x)) "K = 0"
        }
        test "CpuBackend.Gemm through tensors, and its argument checks" {
            let be = Backends.cpu.Get()
            let s = GemmSpec(3, 4, 5, true, false)
            let a, b, c0 = operands 9 s
            use ta = be.FromArray(a, a.Length)
            use tb = be.FromArray(b, b.Length)
            use tc = be.FromArray(c0, c0.Length)
            be.Gemm(ta, tb, tc, s)
            Numeric.close gemmRelRms gemmMaxAbs (naive s a b c0) (tc.ToArray()) "through tensors"
            let rejects what (f: unit -> unit) = Expect.throwsT<ArgumentException> f what
            rejects "lda below M for a transposed A" (fun () -> be.Gemm(ta, tb, tc, GemmSpec(3, 4, 5, true, false, Lda = 2)))
            rejects "A too small for the spec" (fun () -> be.Gemm(ta, tb, tc, GemmSpec(3, 4, 5, Batch = 4)))
            rejects "C aliasing A" (fun () -> be.Gemm(ta, tb, ta, s))
            rejects "negative size" (fun () -> be.Gemm(ta, tb, tc, GemmSpec(-1, 4, 5)))
        }
    ]
