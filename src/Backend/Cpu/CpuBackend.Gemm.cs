// GEMM op of the CPU backend: checks the spec against the tensors, then runs the blocked kernel in
// Gemm/BlockedGemm.cs. C = α·op(A)·op(B) + β·C; maths and conventions: docs/kernels.md §1, GemmSpec.
using TaylorCalibrate.Backend.Cpu.Gemm;

namespace TaylorCalibrate.Backend.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>The micro-kernel GEMMs use: the best this machine supports, unless TC_CPU_GEMM forces one
    /// (an unknown or unsupported name fails when the backend opens, naming the variable).</summary>
    internal GemmKernelKind GemmKernel { get; set; } = MicroKernels.FromEnvironment();

    /// <inheritdoc />
    /// <exception cref="ArgumentException">A negative size, leading dimension, stride or offset; a leading
    /// dimension below its minimum; a tensor too small for the addressed elements; C aliasing A or B.</exception>
    public void Gemm(Tensor a, Tensor b, Tensor c, GemmSpec spec)
    {
        var ta = F32(a, "a");
        var tb = F32(b, "b");
        var tc = F32(c, "c");
        CheckGemm(spec);
        Check.That(!ReferenceEquals(tc, ta) && !ReferenceEquals(tc, tb), "gemm: tensor 'c' must not be 'a' or 'b' (the product is computed in place)");
        Check.Extent(ta, "a", spec.ExtentA);
        Check.Extent(tb, "b", spec.ExtentB);
        Check.Extent(tc, "c", spec.ExtentC);
        BlockedGemm.Run(ta.F, tb.F, tc.F, spec, Workers, GemmKernel);
    }

    /// <summary>Checks the sizes and the layout of a spec (shared by the tests' kernel entry point).</summary>
    internal static void CheckGemm(in GemmSpec s)
    {
        Check.That(s.M >= 0 && s.N >= 0 && s.K >= 0, $"gemm: sizes M={s.M} N={s.N} K={s.K} must be ≥ 0");
        Check.That(s.Batch >= 1, $"gemm: batch {s.Batch} must be ≥ 1");
        Check.That(s.Lda >= 0 && s.Ldb >= 0 && s.Ldc >= 0, $"gemm: leading dimensions lda={s.Lda} ldb={s.Ldb} ldc={s.Ldc} must be ≥ 0");
        Check.That(s.StrideA >= 0 && s.StrideB >= 0 && s.StrideC >= 0, $"gemm: batch strides {s.StrideA}, {s.StrideB}, {s.StrideC} must be ≥ 0");
        Check.That(s.OffsetA >= 0 && s.OffsetB >= 0 && s.OffsetC >= 0, $"gemm: offsets {s.OffsetA}, {s.OffsetB}, {s.OffsetC} must be ≥ 0");
        int minA = s.TransA ? s.M : s.K, minB = s.TransB ? s.K : s.N;
        Check.That(s.LdaResolved >= minA, $"gemm: lda={s.LdaResolved} is below {minA}, the row length of A as stored ({(s.TransA ? "[K,M]" : "[M,K]")})");
        Check.That(s.LdbResolved >= minB, $"gemm: ldb={s.LdbResolved} is below {minB}, the row length of B as stored ({(s.TransB ? "[N,K]" : "[K,N]")})");
        Check.That(s.LdcResolved >= s.N, $"gemm: ldc={s.LdcResolved} is below N={s.N}");
    }
}
