// Chunked (WY) gated delta rule on the Vulkan backend: host side of GdnMode.Chunked (contract:
// IBackend.GdnForward/GdnBackward; maths: docs/kernels.md §3.2 forward, §3.3 backward, §3.4 numerical rules; CPU
// twin: Cpu/Gdn/GdnChunked.cs, GdnChunkedBackward.cs). Kernels (src/Kernels.Glsl/gdn_chunk_*.comp):
//   gdn_chunk_l2    q̂, k̂ = L2-normalised q, k into scratch (only with GdnSpec.L2NormQK)
//   gdn_chunk_wy    per (b, h, chunk): γ, A = (I + L)⁻¹, w, u                         (§3.2 steps 1–4)
//   gdn_chunk_scan  per (b, h, value column): h_c, v_new, final state                (§3.2 step 5)
//   gdn_chunk_out   per (b, h, chunk): o                                             (§3.2 step 6)
// Backward (after replaying the first three with the same inputs):
//   gdn_chunk_dvloc per (b, h, chunk): dv_loc                                        (§3.3 step 1)
//   gdn_chunk_dscan per (b, h, value column): reverse scan, dv2, dh_c, dh0           (§3.3 step 2)
//   gdn_chunk_dqk   per (b, h, chunk): dq̂, dk̂ (state and intra terms), dw, dγ       (§3.3 step 3)
//   gdn_chunk_dwy   per (b, h, chunk): WY backward through A, dv, dβ, dk̂ +=, dg     (§3.3 steps 4–5)
//   gdn_l2_back     dq, dk from dq̂, dk̂ (only with GdnSpec.L2NormQK; shared with the recurrent form)
// Scratch layouts are described in gdn_chunk_common.glsl; everything is fp32. The per-chunk states h_c and
// dh_c, the largest scratch, are tensors of their own (a binding each), apart from the rest of the work.
// The state scans run WG = Tuning.GdnScanColumns value columns per workgroup (KernelClass.cs): narrower on
// GPUs, so that B·H·V/WG workgroups fill the device.
using System.Runtime.InteropServices;

namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>Push constants of the chunked gated-delta-rule kernels (= GLSL Args in gdn_chunk_common.glsl).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct GdnChunkArgs
{
    public uint B, T, H, NT;
    /// <summary><see cref="GdnChunkFlags"/>.</summary>
    public uint Flags;
    public float Scale;
    public uint OffGam, OffA, OffW, OffVn;
    public uint OffDv2, OffDw, OffDgam;
    public uint OffDk, OffDv, OffDg, OffDb;
}

/// <summary>Flags of <see cref="GdnChunkArgs"/> (= GC_* in gdn_chunk_common.glsl).</summary>
[Flags]
internal enum GdnChunkFlags : uint
{
    None = 0,
    H0 = 1,
    /// <summary>Forward: write ht. Backward: dht is bound.</summary>
    Final = 2,
    Dh0 = 4,
}

public sealed partial class VulkanBackend
{
    /// <summary>Invocations per workgroup of the chunked kernels (≥ the largest chunk size, 64).</summary>
    const uint GdnChunkGroup = 64;

    /// <summary>The forward work buffer of the chunked form and its regions (floats; see gdn_chunk_common.glsl).</summary>
    sealed record GdnChunkWork(VulkanTensor Cw, VulkanTensor Hc, VulkanTensor Q, VulkanTensor K, VulkanTensor? Qn, VulkanTensor? Kn, GdnChunkArgs Args);

    /// <summary>Queues §3.2 steps 1–5 (L2 norm, γ, A, w, u, h_c, v_new, and ht when given); the caller
    /// disposes the returned scratch.</summary>
    GdnChunkWork GdnChunkRecompute(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor? ht, GdnSpec spec,
                                   int B, int T, int H, int K, int V)
    {
        int C = spec.ChunkSize, NT = (T + C - 1) / C;
        long BH = (long)B * H, nG = (long)B * T * H;
        long offA = nG, offW = offA + BH * NT * C * C, offVn = offW + nG * K, total = offVn + nG * V;
        var args = new GdnChunkArgs
        {
            B = (uint)B, T = (uint)T, H = (uint)H, NT = (uint)NT, Scale = spec.Scale,
            Flags = (uint)((h0 is null ? GdnChunkFlags.None : GdnChunkFlags.H0) | (ht is null ? GdnChunkFlags.None : GdnChunkFlags.Final)),
            OffGam = 0, OffA = checked((uint)offA), OffW = checked((uint)offW), OffVn = checked((uint)offVn),
        };
        GdnChunkBudget("chunked GdnForward", T, K, V, C);
        var cw = (VulkanTensor)Allocate([checked((int)total)]);
        var hc = (VulkanTensor)Allocate([B, H, NT, K, V]);   // h_c
        VulkanTensor vq = F32(q, "q"), vk = F32(k, "k");
        VulkanTensor? qn = null, kn = null;
        uint[] specs = [(uint)K, (uint)V, (uint)C, GdnChunkGroup];
        if (spec.L2NormQK)
        {
            qn = (VulkanTensor)Allocate([checked((int)(nG * K))]);
            kn = (VulkanTensor)Allocate([checked((int)(nG * K))]);
            var (lx, ly) = Grid(Ceil(2 * nG, GdnChunkGroup));
            Launch("gdn_chunk_l2", specs, [Read(vq, "q"), Read(vk, "k"), Write(qn, "q̂"), Write(kn, "k̂")], args, lx, ly);
            vq = qn;
            vk = kn;
        }
        var (gx, gy) = Grid(BH * NT);
        Launch("gdn_chunk_wy", [.. specs, Tuning.GdnRowSweep ? 1u : 0u],
               [Read(vk, "k"), Read(F32(v, "v"), "v"), Read(F32(g, "g"), "g"), Read(F32(beta, "beta"), "beta"), ReadWrite(cw, "chunk work")],
               args, gx, gy);
        uint cols = Tuning.GdnScanColumns;
        (gx, gy) = Grid(BH * Ceil(V, cols));
        Launch("gdn_chunk_scan", [(uint)K, (uint)V, (uint)C, cols],
               [Read(vk, "k"), ReadWrite(cw, "chunk work"), h0 is null ? Read(cw, "chunk work") : Read(F32(h0, "h0"), "h0"),
                ht is null ? Write(cw, "chunk work") : Write(F32(ht, "ht"), "ht"), Write(hc, "chunk states")],
               args, gx, gy);
        return new GdnChunkWork(cw, hc, vq, vk, qn, kn, args);
    }

    void GdnChunkedForward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor o, Tensor? ht, GdnSpec spec,
                           int B, int T, int H, int K, int V)
    {
        var work = GdnChunkRecompute(q, k, v, g, beta, h0, ht, spec, B, T, H, K, V);
        try
        {
            var (gx, gy) = Grid((long)B * H * work.Args.NT);
            Launch("gdn_chunk_out", [(uint)K, (uint)V, (uint)spec.ChunkSize, GdnChunkGroup],
                   [Read(work.Q, "q"), Read(work.K, "k"), Read(work.Cw, "chunk work"), Write(F32(o, "o"), "o"), Read(work.Hc, "chunk states")],
                   work.Args, gx, gy);
        }
        finally
        {
            DisposeWork(work);
        }
    }

    void GdnChunkedBackward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor dO, Tensor? dht,
                            Tensor dq, Tensor dk, Tensor dv, Tensor dg, Tensor dbeta, Tensor? dh0, GdnSpec spec,
                            int B, int T, int H, int K, int V)
    {
        GdnChunkBudget("chunked GdnBackward", T, K, V, spec.ChunkSize);
        var work = GdnChunkRecompute(q, k, v, g, beta, h0, null, spec, B, T, H, K, V);
        int NT = (int)work.Args.NT;
        long BH = (long)B * H, nG = (long)B * T * H;
        // bw: dv2 (B,T,H,V) | dw (B,T,H,K) | dγ (B,T,H); dh_c (B,H,NT,K,V) in a tensor of its own
        long offDw = nG * V, offDgam = offDw + nG * K, bwTotal = offDgam + nG;
        // gradients: dq̂ | dk̂ | dv | dg | dβ (as the recurrent form's buffer, so gdn_l2_back reads it too)
        long offDk = nG * K, offDv = 2 * nG * K, offDg = offDv + nG * V, offDb = offDg + nG, gTotal = offDb + nG;
        var args = work.Args;
        args.Flags = (uint)((dht is null ? GdnChunkFlags.None : GdnChunkFlags.Final) | (dh0 is null ? GdnChunkFlags.None : GdnChunkFlags.Dh0));
        args.OffDv2 = 0;
        args.OffDw = checked((uint)offDw);
        args.OffDgam = checked((uint)offDgam);
        args.OffDk = checked((uint)offDk);
        args.OffDv = checked((uint)offDv);
        args.OffDg = checked((uint)offDg);
        args.OffDb = checked((uint)offDb);
        var bw = (VulkanTensor)Allocate([checked((int)bwTotal)]);
        var grads = (VulkanTensor)Allocate([checked((int)gTotal)]);
        var dhc = (VulkanTensor)Allocate([B, H, NT, K, V]);   // dh_c
        try
        {
            uint[] specs = [(uint)K, (uint)V, (uint)spec.ChunkSize, GdnChunkGroup];
            VulkanTensor vdO = F32(dO, "dO"), cw = work.Cw;
            var (cx, cy) = Grid(BH * NT);
            uint cols = Tuning.GdnScanColumns;
            var (sx, sy) = Grid(BH * Ceil(V, cols));
            Launch("gdn_chunk_dvloc", specs, [Read(work.Q, "q"), Read(work.K, "k"), Read(cw, "chunk work"), Read(vdO, "dO"), Write(bw, "backward work")],
                   args, cx, cy);
            Launch("gdn_chunk_dscan", [(uint)K, (uint)V, (uint)spec.ChunkSize, cols],
                   [Read(work.Q, "q"), Read(work.K, "k"), Read(cw, "chunk work"), Read(vdO, "dO"), ReadWrite(bw, "backward work"),
                    dht is null ? Read(bw, "backward work") : Read(F32(dht, "dht"), "dht"),
                    dh0 is null ? Write(bw, "backward work") : Write(F32(dh0, "dh0"), "dh0"), Write(dhc, "chunk state gradients")],
                   args, sx, sy);
            Launch("gdn_chunk_dqk", specs,
                   [Read(work.Q, "q"), Read(work.K, "k"), Read(cw, "chunk work"), Read(vdO, "dO"), ReadWrite(bw, "backward work"), Write(grads, "gradients"),
                    Read(work.Hc, "chunk states"), Read(dhc, "chunk state gradients")],
                   args, cx, cy);
            Launch("gdn_chunk_dwy", specs,
                   [Read(work.K, "k"), Read(F32(v, "v"), "v"), Read(F32(beta, "beta"), "beta"), Read(cw, "chunk work"), Read(bw, "backward work"),
                    ReadWrite(grads, "gradients")],
                   args, cx, cy);
            if (spec.L2NormQK)
            {
                var l2 = new GdnArgs { B = (uint)B, T = (uint)T, H = (uint)H, OffDk = (uint)offDk };
                var (lx, ly) = Grid(Ceil(2 * nG, 64));
                Launch("gdn_l2_back", [(uint)K, (uint)V, 64u],
                       [Read(F32(q, "q"), "q"), Read(F32(k, "k"), "k"), Read(grads, "gradients"), Write(F32(dq, "dq"), "dq"), Write(F32(dk, "dk"), "dk")],
                       l2, lx, ly);
            }
            else
            {
                CopyOut(grads, 0, F32(dq, "dq"), nG * K);
                CopyOut(grads, offDk, F32(dk, "dk"), nG * K);
            }
            CopyOut(grads, offDv, F32(dv, "dv"), nG * V);
            CopyOut(grads, offDg, F32(dg, "dg"), nG);
            CopyOut(grads, offDb, F32(dbeta, "dbeta"), nG);
        }
        finally
        {
            // released once the queued work that uses them has finished (deferred)
            bw.Dispose();
            grads.Dispose();
            dhc.Dispose();
            DisposeWork(work);
        }
    }

    static void DisposeWork(GdnChunkWork work)
    {
        // released once the queued work that uses them has finished (deferred)
        work.Cw.Dispose();
        work.Hc.Dispose();
        work.Qn?.Dispose();
        work.Kn?.Dispose();
    }

    /// <summary>Rejects shapes whose longest chunked-kernel invocation exceeds lavapipe's loop guard (upper
    /// bounds of the back-edges of gdn_chunk_*.comp, largest kernel first).</summary>
    void GdnChunkBudget(string op, int T, int K, int V, int C)
    {
        long kc = Ceil(K, GdnKChunk), vc = Ceil(V, GdnKChunk), cc = Ceil(C, GdnKChunk), NT = (T + C - 1) / C;
        long cells = (long)C * C / GdnChunkGroup + 1, rows = (long)C * Math.Max(K, V) / GdnChunkGroup + 1;
        long scan = T * (2 * kc + 3) + NT * (2 * kc + 2) + 2 * kc;                       // gdn_chunk_scan / _dscan
        long wy = 2 * cc + cells * (kc + 1) + C * (cc + 1) + cells + 2 * rows * (cc + 1);  // gdn_chunk_wy
        long outk = cells * (kc + 1) + rows * (kc + cc + 2);                              // gdn_chunk_out / _dvloc
        long dqk = cells * (vc + 1) + (long)K * V / GdnChunkGroup + 1 + K * (3 * vc + 2 * cc + 2) + 2 * GdnChunkGroup;
        long dwy = (K + V) * (cc + 1) + cells * (kc + vc + 1) + 4 * C * (cc + kc + 1) + K * (2 * cc + 1) + 2 * C;
        LoopBudget(op, Math.Max(Math.Max(scan, wy), Math.Max(outk, Math.Max(dqk, dwy))));
    }
}
