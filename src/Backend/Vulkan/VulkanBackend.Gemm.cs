// GEMM on the Vulkan backend (docs/kernels.md §1): C = α·op(A)·op(B) + β·C, batched with strides and offsets.
// Two kernels, chosen per device (override: env TC_VULKAN_GEMM=reg|tiled):
// - gemm_reg.comp: register blocking + vec4 + subgroupBroadcast, for CPU-type devices with a fixed subgroup
//   size (lavapipe: 5.5–7.7 GFLOP/s measured at 1024³ vs ≤ 1.1 for shared-memory tiles);
// - gemm_tiled.comp: shared-memory tiles, for GPUs; no subgroup ops, so any subgroup size works.
// Each operand is bound from its first touched element (rounded down to 16 bytes, so vec4 loads stay
// aligned) to its extent; a batch whose ranges exceed one binding is processed in batch chunks, and a
// single product whose operands exceed it is cut along M, N or K (GemmSplitMnk).
// Split-K (docs/kernels.md §1, after llama.cpp): when K ≥ 2048 and the output tiles fill at most half the
// cores, the K range is cut into ≤ 8 slices (multiples of 256) whose products go to a scratch buffer, and
// gemm_splitk.comp sums them in slice order (deterministic) into C = α·ΣP + β·C.
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

/// <summary>Push constants of gemm_splitk.comp.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct SplitKArgs
{
    public uint M, N, Batch, Splits, Slice;
    public uint Ldc, OffC, StrideC;
    public float Alpha, Beta;
}

public sealed unsafe partial class VulkanBackend
{
    /// <summary>Parallel workgroup slots assumed for split-K decisions: the cores of a CPU device; 32 for a GPU
    /// (core counts need vendor extensions). Settable for tests.</summary>
    internal int SplitKCores { get; set; }

    /// <summary>Tile of gemm_reg.comp: rows per workgroup (multiple of the subgroup size and of 4) and vec4
    /// columns per lane; 0 picks the default (max(32, subgroup) × 2, i.e. 32×8 outputs per lane on lavapipe).</summary>
    internal (uint Bm, uint Tn4) GemmRegTile { get; set; }

    (uint Bm, uint Tn4) RegTile => GemmRegTile.Bm > 0 ? GemmRegTile : (Math.Max(32u, ctx.SubgroupSize), 2u);

    /// <summary>The GEMM kernel in use (settable for tests of both variants on one device).</summary>
    internal GemmKernel GemmVariant { get; set; }

    /// <summary>The GEMM kernel for a tuning (TC_VULKAN_GEMM overrides).</summary>
    internal GemmKernel ChooseGemm(KernelTuning tuning)
    {
        switch (Environment.GetEnvironmentVariable("TC_VULKAN_GEMM"))
        {
            case "reg" when ctx.SubgroupBallot: return GemmKernel.Registers;
            case "tiled": return GemmKernel.Tiled;
        }
        // The register kernel needs workgroup == one subgroup, which only a fixed subgroup size guarantees;
        // CPU drivers (lavapipe 8, SwiftShader 4) have one. GPUs (and TC_VULKAN_KERNELS=gpu) get the tiles.
        return tuning.Class == KernelClass.CpuDriver && ctx.SubgroupBallot && ctx.SubgroupSize <= 64 ? GemmKernel.Registers : GemmKernel.Tiled;
    }

    /// <inheritdoc />
    public void Gemm(Tensor a, Tensor b, Tensor c, GemmSpec s)
    {
        var va = F32(a, "a");
        var vb = F32(b, "b");
        var vc = F32(c, "c");
        Check.That(!ReferenceEquals(vc, va) && !ReferenceEquals(vc, vb), "gemm: tensor 'c' must not be 'a' or 'b' (the product is computed in place)");
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
            if (count == 1 && !Fits(s, first, 1)) GemmSplitMnk(va, vb, vc, Positioned(s, first, 1));
            else GemmChunk(va, vb, vc, s, first, count);
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
        var (a, b, c) = Oversize(s, b0, count);
        return !a && !b && !c;
    }

    /// <summary>Which operand ranges of batch entries [b0, b0+count) exceed one binding.</summary>
    (bool A, bool B, bool C) Oversize(in GemmSpec s, long b0, long count)
    {
        long limit = (long)(BindingLimit / 4) - 16;   // the start moves down to a 16-element boundary at most
        var ra = Range(s.OffsetA, s.StrideAResolved, s.TransA ? s.K : s.M, s.LdaResolved, s.TransA ? s.M : s.K, b0, count);
        var rb = Range(s.OffsetB, s.StrideBResolved, s.TransB ? s.N : s.K, s.LdbResolved, s.TransB ? s.K : s.N, b0, count);
        var rc = Range(s.OffsetC, s.StrideCResolved, s.M, s.LdcResolved, s.N, b0, count);
        return (s.K > 0 && ra.End - ra.First > limit, s.K > 0 && rb.End - rb.First > limit, rc.End - rc.First > limit);
    }

    /// <summary>Batch entries [b0, b0+count) of <paramref name="s"/> as a spec of their own (explicit leading
    /// dimensions and strides, offsets moved to entry b0).</summary>
    static GemmSpec Positioned(in GemmSpec s, long b0, long count) => s with
    {
        Batch = (int)count, Lda = s.LdaResolved, Ldb = s.LdbResolved, Ldc = s.LdcResolved,
        StrideA = s.StrideAResolved, StrideB = s.StrideBResolved, StrideC = s.StrideCResolved,
        OffsetA = s.OffsetA + b0 * s.StrideAResolved, OffsetB = s.OffsetB + b0 * s.StrideBResolved, OffsetC = s.OffsetC + b0 * s.StrideCResolved,
    };

    /// <summary>One batch entry whose operands exceed a binding: halve M (shrinks A [M,K] and C), N (shrinks
    /// B stored [N,K]) or K (shrinks Aᵀ [K,M] and B [K,N]; the second half accumulates with β = 1) until the
    /// pieces fit. Throws (from Bind, naming the tensor) when a single row or column is still too large.</summary>
    void GemmSplitMnk(VulkanTensor a, VulkanTensor b, VulkanTensor c, GemmSpec p)
    {
        var (overA, overB, overC) = Oversize(p, 0, 1);
        if (!overA && !overB && !overC)
        {
            GemmChunk(a, b, c, p, 0, 1);
            return;
        }
        if ((overC || overA && !p.TransA) && p.M > 1)
        {
            int m1 = p.M / 2;
            GemmSplitMnk(a, b, c, p with { M = m1 });
            GemmSplitMnk(a, b, c, p with { M = p.M - m1, OffsetA = p.OffsetA + (p.TransA ? m1 : (long)m1 * p.Lda), OffsetC = p.OffsetC + (long)m1 * p.Ldc });
        }
        else if (overB && p.TransB && p.N > 1)
        {
            int n1 = p.N / 2;
            GemmSplitMnk(a, b, c, p with { N = n1 });
            GemmSplitMnk(a, b, c, p with { N = p.N - n1, OffsetB = p.OffsetB + (long)n1 * p.Ldb, OffsetC = p.OffsetC + n1 });
        }
        else if ((overA || overB) && p.K > 1)
        {
            int k1 = p.K / 2;
            GemmSplitMnk(a, b, c, p with { K = k1 });
            GemmSplitMnk(a, b, c, p with
            {
                K = p.K - k1, Beta = 1f,
                OffsetA = p.OffsetA + (p.TransA ? (long)k1 * p.Lda : k1), OffsetB = p.OffsetB + (p.TransB ? k1 : (long)k1 * p.Ldb),
            });
        }
        else GemmChunk(a, b, c, p, 0, 1);   // Bind reports the operand that cannot fit
    }

    void GemmChunk(VulkanTensor a, VulkanTensor b, VulkanTensor c, in GemmSpec s, long b0, long count)
    {
        // The chunk as a spec of its own: offsets moved to batch b0, every leading dimension and stride explicit.
        var p = Positioned(s, b0, count);
        var (bm, bn) = GemmVariant == GemmKernel.Registers ? (RegTile.Bm, ctx.SubgroupSize * 4 * RegTile.Tn4) : (64u, 64u);
        long tiles = (long)Ceil(p.M, bm) * Ceil(p.N, bn) * p.Batch;
        int cores = SplitKCores > 0 ? SplitKCores : ctx.IsCpu ? Environment.ProcessorCount : 32;
        long align = Math.Max(16L, (long)ctx.MinStorageBufferOffsetAlignment) / 4;   // binding offsets, in elements
        long slice = ((long)p.Batch * p.M * p.N + align - 1) / align * align;
        if (p.K < 2048 || tiles * 2 > cores)
        {
            GemmDispatch(a, b, c, p);
            return;
        }
        long splits = Math.Min(8, cores / tiles);
        long kChunk = (p.K + splits - 1) / splits;
        kChunk = (kChunk + 255) / 256 * 256;
        splits = (p.K + kChunk - 1) / kChunk;
        if (splits <= 1 || (ulong)(splits * slice * 4) > BindingLimit)
        {
            GemmDispatch(a, b, c, p);
            return;
        }
        using var partial = Scratch(splits * slice);
        for (long sIdx = 0; sIdx < splits; sIdx++)
        {
            long k0 = sIdx * kChunk;
            int ks = (int)Math.Min(kChunk, p.K - k0);
            GemmDispatch(a, b, partial, p with
            {
                K = ks, Alpha = 1f, Beta = 0f, Ldc = p.N, StrideC = (long)p.M * p.N, OffsetC = sIdx * slice,
                OffsetA = p.OffsetA + (p.TransA ? k0 * p.Lda : k0), OffsetB = p.OffsetB + (p.TransB ? k0 : k0 * p.Ldb),
            });
        }
        long cFirst = p.OffsetC / align * align;
        var args = new SplitKArgs
        {
            M = (uint)p.M, N = (uint)p.N, Batch = (uint)p.Batch, Splits = (uint)splits, Slice = (uint)slice,
            Ldc = (uint)p.Ldc, OffC = (uint)(p.OffsetC - cFirst), StrideC = (uint)(p.Batch > 1 ? p.StrideC : 0), Alpha = p.Alpha, Beta = p.Beta,
        };
        Launch("gemm_splitk", [ElementwiseWg], [Read(partial, "split-K partials"), Bind(c, "c", true, cFirst, p.ExtentC - cFirst)], args,
            Math.Min(Ceil((long)p.Batch * p.M * p.N, ElementwiseWg), 4096u));
    }

    /// <summary>One GEMM dispatch of <paramref name="s"/> (whose ranges fit one binding each).</summary>
    void GemmDispatch(VulkanTensor a, VulkanTensor b, VulkanTensor c, in GemmSpec s)
    {
        long b0 = 0, count = s.Batch;
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
            uint sg = ctx.SubgroupSize;
            var (bm, tn4) = RegTile;
            Launch("gemm_reg", [sg, ta, tb, bm, tn4], bindings, args, Ceil(s.N, sg * 4 * tn4), Ceil(s.M, bm), (uint)count);
        }
        else
        {
            const uint tx = 16, ty = 16, tm = 4, tn = 4, bk = 16;
            Launch("gemm_tiled", [tx, ta, tb, ty, tm, tn, bk], bindings, args, Ceil(s.N, tx * tn), Ceil(s.M, ty * tm), (uint)count);
        }
    }
}
