/// The small-matrix product of the CPU sequence mixers (Cpu/Gdn/SmallMatrix*.cs), which flash attention and
/// the chunked gated delta rule run on every tile: its Vector256 and Vector512 forms against its scalar form.
/// Every form computes each element as the same fused multiply-add chain over p, then ×α (+C), so the
/// comparison is exact, not within a tolerance: a wrong index, a lost tail or a changed summation order
/// shows as a mismatch. The Vector512 form is skipped, with the reason, where 512-bit vectors are not
/// accelerated.
module TaylorCalibrate.Tests.Ops.CpuSmallMatrixTests

#nowarn "9"

open System.Runtime.Intrinsics
open Microsoft.FSharp.NativeInterop
open Expecto
open TaylorCalibrate.Backend.Cpu
open TaylorCalibrate.Tests

type private Form = delegate of int * int * int * nativeptr<float32> * int * int * nativeptr<float32> * int * nativeptr<float32> * int * float32 * bool -> unit

/// C (M×N, row stride ldc = N + 3) after one product with A given as rows (rsA = Kd) or transposed (Aᵀ stored, rsA = 1).
let private product (form: Form) (m, n, kd, transposedA, alpha, accumulate) =
    let a = Rand.uniform (m * 31 + n * 7 + kd) -1.0 1.0 (m * kd)
    let ldb, ldc = n + 5, n + 3
    let b = Rand.uniform (kd * 13 + n) -1.0 1.0 (kd * ldb)
    let c = Rand.uniform (m + 99) -1.0 1.0 (m * ldc)
    let rsA, csA = if transposedA then 1, m else kd, 1
    use pa = fixed a
    use pb = fixed b
    use pc = fixed c
    form.Invoke(m, n, kd, pa, rsA, csA, pb, ldb, pc, ldc, alpha, accumulate)
    c

let private cases =
    [ for m in [ 1; 3; 4; 7; 8; 9; 17; 64 ] do
      for n in [ 1; 7; 8; 15; 16; 17; 31; 32; 33; 64; 65 ] do
      for kd in [ 1; 5; 64 ] do
      for transposedA in [ false; true ] do
      for alpha, accumulate in [ 1.0f, false; -0.37f, true ] do
          m, n, kd, transposedA, alpha, accumulate ]

let private scalar = Form(fun m n kd a rsA csA b ldb c ldc alpha acc -> SmallMatrix.GemmScalar(m, n, kd, a, rsA, csA, b, ldb, c, ldc, alpha, acc))

let private matchesScalar name (form: Form) =
    for case in cases do
        Expect.sequenceEqual (product form case) (product scalar case) $"{name} {case}"

[<Tests>]
let tests =
    testList "CpuSmallMatrix" [
        test "the Vector256 form equals the scalar form exactly (tails in rows and columns, both A layouts)" {
            matchesScalar "Vector256" (Form(fun m n kd a rsA csA b ldb c ldc alpha acc -> SmallMatrix.GemmNarrow(m, n, kd, a, rsA, csA, b, ldb, c, ldc, alpha, acc)))
        }
        test "the Vector512 form equals the scalar form exactly (tails in rows and columns, both A layouts)" {
            if not Vector512.IsHardwareAccelerated then
                skiptest "512-bit vectors are not accelerated here (no AVX-512, or DOTNET_PreferredVectorBitWidth < 512); skipped"
            matchesScalar "Vector512" (Form(fun m n kd a rsA csA b ldb c ldc alpha acc -> SmallMatrix.GemmWide(m, n, kd, a, rsA, csA, b, ldb, c, ldc, alpha, acc)))
        }
        test "Gemm with wide = true gives the Vector512 form's result, wide = false the Vector256 form's" {
            if not Vector512.IsHardwareAccelerated then
                skiptest "512-bit vectors are not accelerated here (no AVX-512, or DOTNET_PreferredVectorBitWidth < 512); skipped"
            for wide in [ false; true ] do
                let viaGemm = Form(fun m n kd a rsA csA b ldb c ldc alpha acc -> SmallMatrix.Gemm(wide, m, n, kd, a, rsA, csA, b, ldb, c, ldc, alpha, acc))
                matchesScalar $"Gemm(wide = {wide})" viaGemm
        }
    ]
