// Gated delta rule on the Vulkan backend (contract: IBackend.GdnForward/GdnBackward; maths: docs/kernels.md §3;
// CPU twin: Cpu/Gdn). Token-recurrent form: gdn_recurrent.comp (forward, one invocation per value column),
// gdn_recurrent_back.comp (BPTT with segment checkpoints and fixed-order column reductions), gdn_l2_back.comp
// (the in-kernel L2 norm's backward). The chunked WY form (docs/kernels.md §3.2–3.3) is VulkanBackend.GdnChunked.cs.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Push constants of the gated-delta-rule kernels (= GLSL Args in gdn_common.glsl).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct GdnArgs
{
    public uint B, T, H;
    /// <summary><see cref="GdnFlags"/>.</summary>
    public uint Flags;
    public uint Seg, NSeg;
    public float Scale;
    public uint OffRp, OffPart;
    public uint OffDk, OffDv, OffDg, OffDb, OffDh0;
}

/// <summary>Flags of <see cref="GdnArgs"/> (= GDN_* in gdn_common.glsl).</summary>
[Flags]
internal enum GdnFlags : uint
{
    None = 0,
    H0 = 1,
    /// <summary>Forward: write ht. Backward: dht is bound.</summary>
    Final = 2,
    Dh0 = 4,
    L2 = 8,
}

public sealed partial class VulkanBackend
{
    /// <summary>Largest head size K or V (see <see cref="SequenceShapes.GdnMaxHeadDim"/>).</summary>
    public const int GdnMaxHeadDim = SequenceShapes.GdnMaxHeadDim;
    /// <summary>Value columns per workgroup of gdn_recurrent.comp.</summary>
    const uint GdnColumns = 64;
    /// <summary>Chunk of the loops over K (KCHUNK in gdn_common.glsl).</summary>
    const long GdnKChunk = 16;
    /// <summary>Floats of the backward's replay buffer (B·H·seg·K·V) the segment length aims at.</summary>
    const long GdnReplayFloats = 4L << 20;

    /// <inheritdoc />
    public void GdnForward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor o, Tensor? ht, GdnSpec spec)
    {
        var (B, T, H, K, V) = SequenceShapes.Gdn(q, k, v, g, beta, h0, spec);
        Check.Shape(o, "o", B, T, H, V);
        if (ht is not null) Check.Shape(ht, "ht", B, H, K, V);
        if (spec.Mode == GdnMode.Chunked)
        {
            GdnChunkedForward(q, k, v, g, beta, h0, o, ht, spec, B, T, H, K, V);
            return;
        }
        long kc = Ceil(K, GdnKChunk);
        LoopBudget("GdnForward", T * (3 * kc + 1) + 2 * kc);
        var flags = (h0 is null ? GdnFlags.None : GdnFlags.H0) | (ht is null ? GdnFlags.None : GdnFlags.Final)
                    | (spec.L2NormQK ? GdnFlags.L2 : GdnFlags.None);
        var args = new GdnArgs { B = (uint)B, T = (uint)T, H = (uint)H, Flags = (uint)flags, Scale = spec.Scale };
        var vo = F32(o, "o");
        var (gx, gy) = Grid((long)B * H * Ceil(V, GdnColumns));
        Launch("gdn_recurrent", [(uint)K, (uint)V, GdnColumns],
               [Read(F32(q, "q"), "q"), Read(F32(k, "k"), "k"), Read(F32(v, "v"), "v"), Read(F32(g, "g"), "g"), Read(F32(beta, "beta"), "beta"),
                h0 is null ? Read(vo, "o") : Read(F32(h0, "h0"), "h0"), Write(vo, "o"), ht is null ? Write(vo, "o") : Write(F32(ht, "ht"), "ht")],
               args, gx, gy);
    }

    /// <inheritdoc />
    public void GdnBackward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor dO, Tensor? dht,
                            Tensor dq, Tensor dk, Tensor dv, Tensor dg, Tensor dbeta, Tensor? dh0, GdnSpec spec)
    {
        var (B, T, H, K, V) = SequenceShapes.Gdn(q, k, v, g, beta, h0, spec);
        Check.Shape(dO, "dO", B, T, H, V);
        if (dht is not null) Check.Shape(dht, "dht", B, H, K, V);
        Check.Shape(dq, "dq", B, T, H, K);
        Check.Shape(dk, "dk", B, T, H, K);
        Check.Shape(dv, "dv", B, T, H, V);
        Check.Shape(dg, "dg", B, T, H);
        Check.Shape(dbeta, "dbeta", B, T, H);
        if (dh0 is not null) Check.Shape(dh0, "dh0", B, H, K, V);
        if (spec.Mode == GdnMode.Chunked)
        {
            GdnChunkedBackward(q, k, v, g, beta, h0, dO, dht, dq, dk, dv, dg, dbeta, dh0, spec, B, T, H, K, V);
            return;
        }

        long BH = (long)B * H, KV = (long)K * V, nG = (long)B * T * H, nS = BH * KV;
        uint wg = (uint)Math.Min(256, (V + 31) / 32 * 32);   // one invocation per value column
        long np = 2L * K + 3;                                 // partials per column (gdn_recurrent_back.comp)
        int seg = (int)Math.Clamp(GdnReplayFloats / (BH * KV), 1, 64);
        int nSeg = (T + seg - 1) / seg;
        long kc = Ceil(K, GdnKChunk);
        LoopBudget("GdnBackward", T * (13 * kc + (np + wg - 1) / wg * (Ceil(V, GdnKChunk) + 1) + 4) + 3 * nSeg * kc);

        var flags = (h0 is null ? GdnFlags.None : GdnFlags.H0) | (dht is null ? GdnFlags.None : GdnFlags.Final)
                    | (dh0 is null ? GdnFlags.None : GdnFlags.Dh0) | (spec.L2NormQK ? GdnFlags.L2 : GdnFlags.None);
        long offRp = BH * nSeg * KV, offPart = offRp + BH * seg * KV;
        long offDk = nG * K, offDv = 2 * nG * K, offDg = offDv + nG * V, offDb = offDg + nG, offDh0 = offDb + nG;
        var args = new GdnArgs
        {
            B = (uint)B, T = (uint)T, H = (uint)H, Flags = (uint)flags, Seg = (uint)seg, NSeg = (uint)nSeg, Scale = spec.Scale,
            OffRp = checked((uint)offRp), OffPart = checked((uint)offPart),
            OffDk = (uint)offDk, OffDv = (uint)offDv, OffDg = (uint)offDg, OffDb = (uint)offDb, OffDh0 = checked((uint)offDh0),
        };
        // 8 bindings at most: g and β share one buffer, h0 and dht another, all gradients a third
        var gates = (VulkanTensor)Allocate([(int)(2 * nG)]);
        var states = (VulkanTensor)Allocate([(int)(2 * nS)]);
        var work = (VulkanTensor)Allocate([checked((int)(offPart + BH * wg * np))]);
        var grads = (VulkanTensor)Allocate([checked((int)(offDh0 + nS))]);
        try
        {
            CopyInto(F32(g, "g"), gates, 0, nG);
            CopyInto(F32(beta, "beta"), gates, nG, nG);
            if (h0 is not null) CopyInto(F32(h0, "h0"), states, 0, nS);
            if (dht is not null) CopyInto(F32(dht, "dht"), states, nS, nS);
            VulkanTensor vq = F32(q, "q"), vk = F32(k, "k");
            var (gx, gy) = Grid(BH);
            Launch("gdn_recurrent_back", [(uint)K, (uint)V, wg],
                   [Read(vq, "q"), Read(vk, "k"), Read(F32(v, "v"), "v"), Read(gates, "gates"), Read(F32(dO, "dO"), "dO"),
                    Read(states, "states"), ReadWrite(work, "work"), Write(grads, "gradients")],
                   args, gx, gy);
            if (spec.L2NormQK)
            {
                (gx, gy) = Grid(Ceil(2 * nG, 64));
                Launch("gdn_l2_back", [(uint)K, (uint)V, 64u],
                       [Read(vq, "q"), Read(vk, "k"), Read(grads, "gradients"), Write(F32(dq, "dq"), "dq"), Write(F32(dk, "dk"), "dk")], args, gx, gy);
            }
            else
            {
                CopyOut(grads, 0, F32(dq, "dq"), nG * K);
                CopyOut(grads, offDk, F32(dk, "dk"), nG * K);
            }
            CopyOut(grads, offDv, F32(dv, "dv"), nG * V);
            CopyOut(grads, offDg, F32(dg, "dg"), nG);
            CopyOut(grads, offDb, F32(dbeta, "dbeta"), nG);
            if (dh0 is not null) CopyOut(grads, offDh0, F32(dh0, "dh0"), nS);
        }
        finally
        {
            // released once the queued work that uses them has finished (deferred)
            gates.Dispose();
            states.Dispose();
            work.Dispose();
            grads.Dispose();
        }
    }

    /// <summary>Queues dst[at, at+count) = src[0, count) (floats).</summary>
    void CopyInto(VulkanTensor src, VulkanTensor dst, long at, long count) =>
        rec.Copy(src.Buffer, 0, dst.Buffer, 4UL * (ulong)at, 4UL * (ulong)count);

    /// <summary>Queues dst[0, count) = src[from, from+count) (floats).</summary>
    void CopyOut(VulkanTensor src, long from, VulkanTensor dst, long count) =>
        rec.Copy(src.Buffer, 4UL * (ulong)from, dst.Buffer, 0, 4UL * (ulong)count);

}
