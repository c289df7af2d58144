// Sequence mixers of the CPU backend: causal GQA softmax attention (docs/kernels.md §2) and the gated
// delta rule (§3). This file validates arguments and splits the work; the kernels live in Cpu/Attention
// (flash attention) and Cpu/Gdn (token-recurrent and chunked gated delta rule). Work is parallel over
// independent (batch, head[, block]) items, each writing disjoint output slices, so results are
// deterministic and free of races.
namespace TaylorCalibrate.Backend.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Largest head size K or V (see <see cref="SequenceShapes.GdnMaxHeadDim"/>).</summary>
    public const int GdnMaxHeadDim = SequenceShapes.GdnMaxHeadDim;

    // ---- attention --------------------------------------------------------------------------------------

    /// <inheritdoc />
    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale, Tensor? stats = null, Tensor? probs = null)
    {
        var (B, T, H, Hkv, D) = SequenceShapes.Attention(q, k, v);
        Check.Shape(o, "o", B, T, H, D);
        Check.Shape(lse, "lse", B, H, T);
        if (stats is not null) Check.Shape(stats, "stats", B, H, 2);
        if (probs is not null) Check.Shape(probs, "probs", B, H, T, T);
        FlashAttention.Forward(F32(q, "q").F, F32(k, "k").F, F32(v, "v").F, F32(o, "o").F, F32(lse, "lse").F,
                               stats is null ? null : F32(stats, "stats").F, probs is null ? null : F32(probs, "probs").F,
                               new AttentionDims(B, T, H, Hkv, D), scale, Wide);
    }

    /// <inheritdoc />
    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, Tensor dq, Tensor dk, Tensor dv, float scale)
    {
        var (B, T, H, Hkv, D) = SequenceShapes.Attention(q, k, v);
        Check.Shape(o, "o", B, T, H, D);
        Check.Shape(lse, "lse", B, H, T);
        Check.Shape(dO, "dO", B, T, H, D);
        Check.Shape(dq, "dq", B, T, H, D);
        Check.Shape(dk, "dk", B, T, Hkv, D);
        Check.Shape(dv, "dv", B, T, Hkv, D);
        FlashAttention.Backward(F32(q, "q").F, F32(k, "k").F, F32(v, "v").F, F32(o, "o").F, F32(lse, "lse").F, F32(dO, "dO").F,
                                F32(dq, "dq").F, F32(dk, "dk").F, F32(dv, "dv").F, new AttentionDims(B, T, H, Hkv, D), scale, Wide);
    }


    // ---- gated delta rule -------------------------------------------------------------------------------

    /// <inheritdoc />
    public void GdnForward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor o, Tensor? ht, GdnSpec spec)
    {
        var (B, T, H, K, V) = SequenceShapes.Gdn(q, k, v, g, beta, h0, spec);
        Check.Shape(o, "o", B, T, H, V);
        if (ht is not null) Check.Shape(ht, "ht", B, H, K, V);
        float[] qf = F32(q, "q").F, kf = F32(k, "k").F, vf = F32(v, "v").F, gf = F32(g, "g").F, bf = F32(beta, "beta").F;
        float[]? h0f = h0 is null ? null : F32(h0, "h0").F;
        float[] of = F32(o, "o").F;
        float[]? htf = ht is null ? null : F32(ht, "ht").F;
        var s = spec;
        bool wide = Wide;
        Parallel.For(0, B * H, bh =>
        {
            int b = bh / H, h = bh % H;
            var p = GdnHead.Gather(qf, kf, vf, gf, bf, h0f, b, h, T, H, K, V, s.L2NormQK);
            var oh = Workspace.Get(Workspace.Slot.Output, (long)T * V);   // (T, V)
            var state = Workspace.Get(Workspace.Slot.State, (long)K * V); // (K, V) h0 or zeros, then the final state
            if (p.H0 is null) state.AsSpan(0, K * V).Clear(); else p.H0.AsSpan(0, K * V).CopyTo(state);
            if (s.Mode == GdnMode.Chunked) GdnChunked.Forward(p, s.ChunkSize, s.Scale, oh, state, null, wide);
            else RecurrentForward(p, s.Scale, oh, state, wide);
            GdnHead.ScatterRows(oh, of, b, h, T, H, V);
            if (htf is not null) state.AsSpan(0, K * V).CopyTo(htf.AsSpan((int)((long)bh * K * V), K * V));
        });
    }

    static unsafe void RecurrentForward(GdnHead p, float scale, float[] o, float[] state, bool wide)
    {
        var work = new float[2 * p.V];
        fixed (float* s = state, op = o, w = work) GdnRecurrent.Forward(p, 0, p.T, scale, s, op, w, wide);
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
        float[] qf = F32(q, "q").F, kf = F32(k, "k").F, vf = F32(v, "v").F, gf = F32(g, "g").F, bf = F32(beta, "beta").F;
        float[]? h0f = h0 is null ? null : F32(h0, "h0").F;
        float[] dOf = F32(dO, "dO").F;
        float[]? dhtf = dht is null ? null : F32(dht, "dht").F;
        float[] dqf = F32(dq, "dq").F, dkf = F32(dk, "dk").F, dvf = F32(dv, "dv").F, dgf = F32(dg, "dg").F, dbf = F32(dbeta, "dbeta").F;
        float[]? dh0f = dh0 is null ? null : F32(dh0, "dh0").F;
        var s = spec;
        bool wide = Wide;
        Parallel.For(0, B * H, bh =>
        {
            int b = bh / H, h = bh % H;
            var p = GdnHead.Gather(qf, kf, vf, gf, bf, h0f, b, h, T, H, K, V, s.L2NormQK);
            var dOh = Workspace.Get(Workspace.Slot.Upstream, (long)T * V);   // (T, V)
            GdnHead.GatherRows(dOf, dOh, b, h, T, H, V);
            float[]? dhth = null;                                    // (K, V)
            if (dhtf is not null)
            {
                dhth = Workspace.Get(Workspace.Slot.UpstreamState, (long)K * V);
                dhtf.AsSpan((int)((long)bh * K * V), K * V).CopyTo(dhth);
            }
            var gr = new GdnHeadGrads(T, K, V);
            if (s.Mode == GdnMode.Chunked) GdnChunkedBackward.Run(p, s.ChunkSize, s.Scale, dOh, dhth, gr, wide);
            else GdnRecurrent.Backward(p, dOh, dhth, s.Scale, gr, wide);
            if (s.L2NormQK)
            {
                GdnHead.L2NormBackward(gr.DQ, p.Q, p.RstdQ!, T, K);
                GdnHead.L2NormBackward(gr.DK, p.Kx, p.RstdK!, T, K);
            }
            GdnHead.ScatterRows(gr.DQ, dqf, b, h, T, H, K);
            GdnHead.ScatterRows(gr.DK, dkf, b, h, T, H, K);
            GdnHead.ScatterRows(gr.DV, dvf, b, h, T, H, V);
            GdnHead.ScatterGate(gr.DG, dgf, b, h, T, H);
            GdnHead.ScatterGate(gr.DBeta, dbf, b, h, T, H);
            if (dh0f is not null) gr.DH0.AsSpan(0, K * V).CopyTo(dh0f.AsSpan((int)((long)bh * K * V), K * V));
        });
    }

}
