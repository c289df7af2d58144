// GEMM on the Vulkan backend (kernels.md §1): C = α·op(A)·op(B) + β·C, batched with strides and offsets.
// Two kernels, chosen per device (override: env TC_VULKAN_GEMM=reg|tiled):
// - gemm_reg.comp: register blocking + vec4 + subgroupBroadcast, for CPU-type devices with a fixed subgroup
//   size (lavapipe: 5.5–7.7 GFLOP/s measured at 1024³ vs ≤ 1.1 for shared-memory tiles);
// - gemm_tiled.comp: shared-memory tiles, for GPUs; no subgroup ops, so any subgroup size works.
// Each operand is bound from its first touched element (rounded down to 16 bytes, so vec4 loads stay
// aligned) to its extent; a batch whose ranges exceed one binding is processed in batch chunks.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Which GEMM kernel a device uses.</summary>
internal enum GemmKernel
{
    /// <summary>gemm_reg.comp (no shared memory; one subgroup per workgroup).</summary>
    Registers,
    /// <summary>gemm_tiled.comp (shared-memory tiles).</summary>
    Tiled,
}

/// <summary>Push constants of the GEMM kernels (= GLSL Args in gemm_common.glsl).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct GemmArgs
{
    public uint M, N, K;
    public uint Lda, Ldb, Ldc;
    public uint OffA, OffB, OffC;
    public uint StrideA, StrideB, StrideC;
    public float Alpha, Beta;
    public uint Flags;
    public uint Pad;
}

public sealed unsafe partial class VulkanBackend
{
    /// <summary>The GEMM kernel in use (settable for tests of both variants on one device).</summary>
    internal GemmKernel GemmVariant { get; set; }

    GemmKernel ChooseGemm()
    {
        switch (Environment.GetEnvironmentVariable("TC_VULKAN_GEMM"))
        {
            case "reg" when ctx.SubgroupBallot: return GemmKernel.Registers;
            case "tiled": return GemmKernel.Tiled;
        }
        // The register kernel needs workgroup == one subgroup, which only a fixed subgroup size guarantees;
        // CPU drivers (lavapipe 8, SwiftShader 4) have one. GPUs get the shared-memory tiles.
        return ctx.IsCpu && ctx.SubgroupBallot && ctx.SubgroupSize <= 64 ? GemmKernel.Registers : GemmKernel.Tiled;
    }

    /// <inheritdoc />
    public void Gemm(Tensor a, Tensor b, Tensor c, GemmSpec s)
    {
        var va = F32(a, "a");
        var vb = F32(b, "b");
        var vc = F32(c, "c");
        Check.That(s.M >= 0 && s.N >= 0 && s.K >= 0 && s.Batch >= 1, $"GEMM sizes M={s.M} N={s.N} K={s.K} batch={s.Batch} must be non-negative (batch ≥ 1)");
        Check.That(s.LdaResolved >= (s.TransA ? s.M : s.K), $"GEMM lda {s.LdaResolved} < {(s.TransA ? "M" : "K")}");
        Check.That(s.LdbResolved >= (s.TransB ? s.K : s.N), $"GEMM ldb {s.LdbResolved} < {(s.TransB ? "K" : "N")}");
        Check.That(s.LdcResolved >= s.N, $"GEMM ldc {s.LdcResolved} < N");
        Check.That(s.OffsetA >= 0 && s.OffsetB >= 0 && s.OffsetC >= 0 && s.StrideA >= 0 && s.StrideB >= 0 && s.StrideC >= 0,
            "GEMM offsets and strides must be non-negative");
        Check.Extent(va, "a", s.ExtentA);
        Check.Extent(vb, "b", s.ExtentB);
        Check.Extent(vc, "c", s.ExtentC);
        if (s.M == 0 || s.N == 0) return;

        long maxZ = ctx.Properties.Limits.MaxComputeWorkGroupCount[2];
        for (long first = 0; first < s.Batch;)
        {
            long count = Math.Min(s.Batch - first, maxZ);
            // Halve the batch chunk until every operand range fits one binding.
            while (count > 1 && !Fits(s, first, count)) count = (count + 1) / 2;
            GemmChunk(va, vb, vc, s, first, count);
            first += count;
        }
    }

    /// <summary>Elements [first, end) of an operand for batch entries [b0, b0+count).</summary>
    static (long First, long End) Range(long offset, long stride, long rows, long ld, long cols, long b0, long count)
    {
        long first = offset + b0 * stride;
        return (first, first + (count - 1) * stride + (rows - 1) * ld + cols);
    }

    bool Fits(in GemmSpec s, long b0, long count)
    {
        long limit = (long)(BindingLimit / 4) - 4;   // the start may move down by up to 3 elements
        var ra = Range(s.OffsetA, s.StrideAResolved, s.TransA ? s.K : s.M, s.LdaResolved, s.TransA ? s.M : s.K, b0, count);
        var rb = Range(s.OffsetB, s.StrideBResolved, s.TransB ? s.N : s.K, s.LdbResolved, s.TransB ? s.K : s.N, b0, count);
        var rc = Range(s.OffsetC, s.StrideCResolved, s.M, s.LdcResolved, s.N, b0, count);
        return (s.K == 0 || ra.End - ra.First <= limit && rb.End - rb.First <= limit) && rc.End - rc.First <= limit;
    }

    void GemmChunk(VulkanTensor a, VulkanTensor b, VulkanTensor c, in GemmSpec s, long b0, long count)
    {
        long align = Math.Max(16L, (long)ctx.MinStorageBufferOffsetAlignment) / 4;
        (Binding Bind, uint Local) Operand(VulkanTensor t, string name, bool write, (long First, long End) r)
        {
            if (r.End <= r.First) return (Bind(t, name, write, 0, Math.Min(t.Count, 4)), 0);
            long start = r.First / align * align;
            return (Bind(t, name, write, start, r.End - start), checked((uint)(r.First - start)));
        }
        bool noK = s.K == 0;
        var (ba, offA) = Operand(a, "a", false, noK ? (0, 0) : Range(s.OffsetA, s.StrideAResolved, s.TransA ? s.K : s.M, s.LdaResolved, s.TransA ? s.M : s.K, b0, count));
        var (bb, offB) = Operand(b, "b", false, noK ? (0, 0) : Range(s.OffsetB, s.StrideBResolved, s.TransB ? s.N : s.K, s.LdbResolved, s.TransB ? s.K : s.N, b0, count));
        var (bc, offC) = Operand(c, "c", true, Range(s.OffsetC, s.StrideCResolved, s.M, s.LdcResolved, s.N, b0, count));
        uint strideA = checked((uint)(count > 1 ? s.StrideAResolved : 0));
        uint strideB = checked((uint)(count > 1 ? s.StrideBResolved : 0));
        uint strideC = checked((uint)(count > 1 ? s.StrideCResolved : 0));
        static bool Aligned(uint off, long ld, uint stride) => off % 4 == 0 && ld % 4 == 0 && stride % 4 == 0;
        var args = new GemmArgs
        {
            M = (uint)s.M, N = (uint)s.N, K = (uint)s.K,
            Lda = (uint)s.LdaResolved, Ldb = (uint)s.LdbResolved, Ldc = (uint)s.LdcResolved,
            OffA = offA, OffB = offB, OffC = offC,
            StrideA = strideA, StrideB = strideB, StrideC = strideC,
            Alpha = s.Alpha, Beta = s.Beta,
            Flags = (Aligned(offA, s.LdaResolved, strideA) ? 1u : 0) | (Aligned(offB, s.LdbResolved, strideB) ? 2u : 0) | (Aligned(offC, s.LdcResolved, strideC) ? 4u : 0),
        };
        Binding[] bindings = [ba, bb, bc];
        uint ta = s.TransA ? 1u : 0, tb = s.TransB ? 1u : 0;
        if (GemmVariant == GemmKernel.Registers)
        {
            uint sg = ctx.SubgroupSize, bm = Math.Max(32u, sg), tn4 = 2;
            Launch("gemm_reg", [sg, ta, tb, bm, tn4], bindings, args, Ceil(s.N, sg * 4 * tn4), Ceil(s.M, bm), (uint)count);
        }
        else
        {
            const uint tx = 16, ty = 16, tm = 4, tn = 4, bk = 16;
            Launch("gemm_tiled", [tx, ta, tb, ty, tm, tn, bk], bindings, args, Ceil(s.N, tx * tn), Ceil(s.M, ty * tm), (uint)count);
        }
    }
}
