// Causal GQA softmax attention, flash style, on the CPU. Maths: docs/kernels.md §2 (forward with online softmax,
// statistics mode, backward in two race-free passes); statistics definitions: docs/method.md §5.1 and §11d.
// s_ij = scale·q_i·k_j for j ≤ i; query head h reads kv head h / (H/Hkv). Tiles of BR query rows × BC key
// rows; no T×T matrix is ever formed (except the optional probs output, a diagnostic for small T).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace TaylorCalibrate.Backend.Cpu;

/// <summary>Sizes of an attention call: q [B,T,H,D], k and v [B,T,Hkv,D].</summary>
internal readonly record struct AttentionDims(int B, int T, int H, int Hkv, int D)
{
    public int Group => H / Hkv;
}

internal static unsafe partial class FlashAttention
{
    const int BR = 64;   // query rows per tile
    const int BC = 64;   // key rows per tile (equal to BR, so the dK/dV pass starts at the diagonal tile)
    /// <summary>Initial running max: finite, so m − m′ is never (−inf) − (−inf) = NaN (docs/kernels.md §2).</summary>
    const float MInit = -float.MaxValue / 2;

    /// <summary>
    /// o [B,T,H,D], lse [B,H,T] = m + ln l (natural log); stats [B,H,2] (mean distance, mean entropy) and
    /// probs [B,H,T,T] when not null. <paramref name="wide"/>: 512-bit tile products and exponentials.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Forward(float[] q, float[] k, float[] v, float[] o, float[] lse, float[]? stats, float[]? probs,
                               AttentionDims d, float scale, bool wide)
    {
        int nQB = (d.T + BR - 1) / BR;
        var partial = stats is null ? null : new double[(long)d.B * d.H * nQB * 2]; // per item Σ_rows (distance, entropy)
        Parallel.For(0, d.B * d.H * nQB, item =>
        {
            int qb = item % nQB, bh = item / nQB, b = bh / d.H, h = bh % d.H;
            ForwardTile(q, k, v, o, lse, partial, item, d, b, h, qb * BR, Math.Min(d.T, qb * BR + BR), scale, wide);
        });
        if (stats is not null)
        {
            // fixed-order reduction of the per-tile row sums: deterministic for a given T
            for (int bh = 0; bh < d.B * d.H; bh++)
            {
                double dist = 0, ent = 0;
                for (int qb = 0; qb < nQB; qb++) { dist += partial![(bh * nQB + qb) * 2]; ent += partial[(bh * nQB + qb) * 2 + 1]; }
                stats[bh * 2] = (float)(dist / d.T);
                stats[bh * 2 + 1] = (float)(ent / d.T);
            }
        }
        if (probs is not null) WriteProbs(q, k, lse, probs, d, scale);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ForwardTile(float[] q, float[] k, float[] v, float[] o, float[] lse, double[]? partial, int item,
                            AttentionDims d, int b, int h, int i0, int i1, float scale, bool wide)
    {
        int D = d.D, T = d.T, hk = h / d.Group, nr = i1 - i0;
        int qStride = d.H * D, kvStride = d.Hkv * D;
        var work = Workspace.Get(Workspace.Slot.Tile, BR * D + D * BC + BR * BC + 4 * BR);
        fixed (float* qp = q, kp = k, vp = v, op = o, wk = work)
        {
            float* acc = wk;                  // (BR, D) un-normalised output
            float* kT = acc + BR * D;         // (D, BC) key tile, transposed
            float* S = kT + D * BC;           // (BR, BC) scores, then probabilities e^{s−m}
            float* m = S + BR * BC;           // (BR) running max
            float* l = m + BR;                // (BR) running Σe^{s−m}
            float* sD = l + BR;               // (BR) running Σe^{s−m}·D_ij
            float* sS = sD + BR;              // (BR) running Σe^{s−m}·s_ij
            new Span<float>(m, BR).Fill(MInit);
            new Span<float>(l, 3 * BR).Clear();   // l, sD, sS (the tile buffer is reused, see Workspace)
            float* qb = qp + ((long)(b * T + i0) * d.H + h) * D;
            for (int j0 = 0; j0 < i1; j0 += BC)       // blocks right of the diagonal are skipped
            {
                int nc = Math.Min(BC, i1 - j0);
                float* kb = kp + ((long)(b * T + j0) * d.Hkv + hk) * D;
                float* vb = vp + ((long)(b * T + j0) * d.Hkv + hk) * D;
                SmallMatrix.Transpose(kb, nc, D, kvStride, kT, BC);
                SmallMatrix.Gemm(wide, nr, nc, D, qb, qStride, 1, kT, BC, S, BC, scale);
                for (int r = 0; r < nr; r++)
                {
                    int i = i0 + r;
                    float* sr = S + r * BC;
                    int valid = Math.Min(nc, i - j0 + 1);    // causal mask: columns j0 + c ≤ i
                    if (valid <= 0) { new Span<float>(sr, nc).Clear(); continue; }
                    float mx = m[r];
                    for (int c = 0; c < valid; c++) mx = MathF.Max(mx, sr[c]);
                    float alpha = MathF.Exp(m[r] - mx), ps, pd, pss;
                    if (wide) ExpRowWide(sr, valid, nc, mx, i - j0, out ps, out pd, out pss);
                    else ExpRow(sr, valid, nc, mx, i - j0, out ps, out pd, out pss);
                    l[r] = l[r] * alpha + ps;
                    sD[r] = sD[r] * alpha + pd;
                    sS[r] = sS[r] * alpha + pss;
                    m[r] = mx;
                    if (alpha != 1f) SmallMatrix.ScaleInPlace(alpha, acc + r * D, D);
                }
                if (j0 == 0) SmallMatrix.Gemm(wide, nr, D, nc, S, BC, 1, vb, kvStride, acc, D);
                else SmallMatrix.Gemm(wide, nr, D, nc, S, BC, 1, vb, kvStride, acc, D, 1f, accumulate: true);
            }
            double dist = 0, ent = 0;
            for (int r = 0; r < nr; r++)
            {
                int i = i0 + r;
                float inv = 1f / l[r];
                float* orow = op + ((long)(b * T + i) * d.H + h) * D;
                for (int c = 0; c < D; c++) orow[c] = acc[r * D + c] * inv;
                float lrow = m[r] + MathF.Log(l[r]);
                lse[((long)b * d.H + h) * T + i] = lrow;
                dist += sD[r] * inv;
                ent += lrow - sS[r] * inv;     // −Σp ln p = lse − Σp·s
            }
            if (partial is not null) { partial[item * 2] = dist; partial[item * 2 + 1] = ent; }
        }
    }

    // s[c] ← e^{s[c]−m} for c < valid (arguments ≤ 0), 0 for valid ≤ c < n; returns Σp, Σp·max(off−c, 0.5), Σp·s
    // where off = i − j0 (so off − c = i − j). The specification is the scalar loop at the end.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ExpRow(float* s, int valid, int n, float m, int off, out float ps, out float pd, out float pss)
    {
        var vm = Vector256.Create(m);
        var vaccP = Vector256<float>.Zero;
        var vaccD = Vector256<float>.Zero;
        var vaccS = Vector256<float>.Zero;
        var half = Vector256.Create(0.5f);
        var lane = Vector256.Create(0f, 1f, 2f, 3f, 4f, 5f, 6f, 7f);
        int c = 0;
        for (; c + 8 <= valid; c += 8)
        {
            var x = Vector256.Load(s + c);
            var p = Vector256.Exp(x - vm);
            p.Store(s + c);
            var dist = Vector256.Max(Vector256.Create((float)(off - c)) - lane, half);
            vaccP += p;
            vaccD = Vector256.FusedMultiplyAdd(p, dist, vaccD);
            vaccS = Vector256.FusedMultiplyAdd(p, x, vaccS);
        }
        ExpRowTail(s, c, valid, n, m, off, Vector256.Sum(vaccP), Vector256.Sum(vaccD), Vector256.Sum(vaccS), out ps, out pd, out pss);
    }

    // The scalar end of ExpRow/ExpRowWide: columns [c, valid) one at a time after the vector part's sums,
    // then the masked columns [valid, n) zeroed.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void ExpRowTail(float* s, int c, int valid, int n, float m, int off, float sp, float sd, float sx,
                           out float ps, out float pd, out float pss)
    {
        for (; c < valid; c++)
        {
            float x = s[c];
            float p = MathF.Exp(x - m);
            s[c] = p;
            sp += p;
            sd += p * MathF.Max(off - c, 0.5f);
            sx += p * x;
        }
        for (; c < n; c++) s[c] = 0f;
        ps = sp; pd = sd; pss = sx;
    }

    // probs[b,h,i,j] = e^{s_ij − lse_i} for j ≤ i, else 0 (diagnostics; O(T²·D) plain dot products).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void WriteProbs(float[] q, float[] k, float[] lse, float[] probs, AttentionDims d, float scale)
    {
        int T = d.T, D = d.D;
        Parallel.For(0, d.B * d.H, bh =>
        {
            int b = bh / d.H, h = bh % d.H, hk = h / d.Group;
            fixed (float* qp = q, kp = k, pp = probs)
                for (int i = 0; i < T; i++)
                {
                    float* qi = qp + ((long)(b * T + i) * d.H + h) * D;
                    float* row = pp + ((long)bh * T + i) * T;
                    float li = lse[(long)bh * T + i];
                    for (int j = 0; j <= i; j++)
                        row[j] = MathF.Exp(scale * SmallMatrix.Dot(qi, kp + ((long)(b * T + j) * d.Hkv + hk) * D, D) - li);
                    new Span<float>(row + i + 1, T - i - 1).Clear();
                }
        });
    }

    // ExpRow in Vector512: 16 columns at a time, then at most one 8-column step and the scalar tail, so every
    // p is the same exp as in ExpRow (bit for bit); the three sums run over 16 lanes, so they differ from
    // ExpRow's by rounding only.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ExpRowWide(float* s, int valid, int n, float m, int off, out float ps, out float pd, out float pss)
    {
        var wm = Vector512.Create(m);
        var waccP = Vector512<float>.Zero;
        var waccD = Vector512<float>.Zero;
        var waccS = Vector512<float>.Zero;
        var whalf = Vector512.Create(0.5f);
        var wlane = Vector512.Create(0f, 1f, 2f, 3f, 4f, 5f, 6f, 7f, 8f, 9f, 10f, 11f, 12f, 13f, 14f, 15f);
        int c = 0;
        for (; c + 16 <= valid; c += 16)
        {
            var x = Vector512.Load(s + c);
            var p = Vector512.Exp(x - wm);
            p.Store(s + c);
            var dist = Vector512.Max(Vector512.Create((float)(off - c)) - wlane, whalf);
            waccP += p;
            waccD = Vector512.FusedMultiplyAdd(p, dist, waccD);
            waccS = Vector512.FusedMultiplyAdd(p, x, waccS);
        }
        var vaccP = waccP.GetLower() + waccP.GetUpper();
        var vaccD = waccD.GetLower() + waccD.GetUpper();
        var vaccS = waccS.GetLower() + waccS.GetUpper();
        if (c + 8 <= valid)
        {
            var vm = Vector256.Create(m);
            var x = Vector256.Load(s + c);
            var p = Vector256.Exp(x - vm);
            p.Store(s + c);
            var dist = Vector256.Max(Vector256.Create((float)(off - c)) - Vector256.Create(0f, 1f, 2f, 3f, 4f, 5f, 6f, 7f), Vector256.Create(0.5f));
            vaccP += p;
            vaccD = Vector256.FusedMultiplyAdd(p, dist, vaccD);
            vaccS = Vector256.FusedMultiplyAdd(p, x, vaccS);
            c += 8;
        }
        ExpRowTail(s, c, valid, n, m, off, Vector256.Sum(vaccP), Vector256.Sum(vaccD), Vector256.Sum(vaccS), out ps, out pd, out pss);
    }
}
