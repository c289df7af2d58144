// Causal GQA softmax attention, backward (docs/kernels.md §2): δ_i = dO_i·O_i; P_ij = e^{s_ij − LSE_i};
// dS_ij = P_ij(dO_i·v_j − δ_i); dV_j = Σ_i P_ij dO_i; dK_j = scale·Σ_i dS_ij q_i; dQ_i = scale·Σ_j dS_ij k_j.
// Two passes without float atomics: dK/dV parallel over (b, kv head, key tile), looping over the group's
// query heads and the query tiles from the diagonal on; dQ parallel over (b, h, query tile).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace TaylorCalibrate.Backend.Cpu;

internal static unsafe partial class FlashAttention
{
    /// <summary>dq [B,T,H,D]; dk, dv [B,T,Hkv,D] (overwritten, summed over each group's query heads).
    /// <paramref name="wide"/>: 512-bit tile products and exponentials (the same bits as the 256-bit forms).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Backward(float[] q, float[] k, float[] v, float[] o, float[] lse, float[] dO,
                                float[] dq, float[] dk, float[] dv, AttentionDims d, float scale, bool wide)
    {
        int T = d.T, D = d.D, nB = (T + BR - 1) / BR;
        var delta = new float[(long)d.B * d.H * T];   // (B, H, T) δ_i = dO_i·O_i
        Parallel.For(0, d.B * d.H, bh =>
        {
            int b = bh / d.H, h = bh % d.H;
            fixed (float* op = o, dop = dO)
                for (int i = 0; i < T; i++)
                {
                    long off = ((long)(b * T + i) * d.H + h) * D;
                    delta[(long)bh * T + i] = SmallMatrix.Dot(op + off, dop + off, D);
                }
        });
        Parallel.For(0, d.B * d.Hkv * nB, item => KeyValueTile(q, k, v, lse, dO, delta, dk, dv, d, item, scale, wide));
        Parallel.For(0, d.B * d.H * nB, item => QueryTile(q, k, v, lse, dO, delta, dq, d, item, scale, wide));
    }

    // P = e^{scale·Q Kᵀ − lse} (masked before exp), then dS = P ⊙ (dO Vᵀ − δ). S, dP: (BR, BC).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ProbsAndScoreGrads(float* qb, float* dOb, float* kT, float* vT, int nr, int nc, int i0, int j0,
                                   float* lseRow, float* deltaRow, int stride, int D, float scale, float* S, float* dP, bool wide)
    {
        SmallMatrix.Gemm(wide, nr, nc, D, qb, stride, 1, kT, BC, S, BC, scale);
        SmallMatrix.Gemm(wide, nr, nc, D, dOb, stride, 1, vT, BC, dP, BC);
        for (int r = 0; r < nr; r++)
            ProbsAndScoreGradsRow(S + r * BC, dP + r * BC, Math.Clamp(i0 + r - j0 + 1, 0, nc), nc, lseRow[r], deltaRow[r], wide);
    }

    // One row: s[c] ← p = e^{s[c] − lse}, dp[c] ← p·(dp[c] − δ) for c < valid, both 0 for valid ≤ c < n.
    // The wide form takes 16 columns at a time, then the same 8-column and scalar steps as the narrow one,
    // so each column goes through the same exp and the bits agree. The scalar loop is the specification.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ProbsAndScoreGradsRow(float* sr, float* dpr, int valid, int nc, float lse, float delta, bool wide)
    {
        int c = 0;
        if (wide)
        {
            var wl = Vector512.Create(lse);
            var wd = Vector512.Create(delta);
            for (; c + 16 <= valid; c += 16)
            {
                var p = Vector512.Exp(Vector512.Load(sr + c) - wl);
                p.Store(sr + c);
                (p * (Vector512.Load(dpr + c) - wd)).Store(dpr + c);
            }
        }
        var vl = Vector256.Create(lse);
        var vd = Vector256.Create(delta);
        for (; c + 8 <= valid; c += 8)
        {
            var p = Vector256.Exp(Vector256.Load(sr + c) - vl);
            p.Store(sr + c);
            (p * (Vector256.Load(dpr + c) - vd)).Store(dpr + c);
        }
        for (; c < valid; c++)
        {
            float p = MathF.Exp(sr[c] - lse);
            sr[c] = p;
            dpr[c] = p * (dpr[c] - delta);
        }
        for (; c < nc; c++) { sr[c] = 0f; dpr[c] = 0f; }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void KeyValueTile(float[] q, float[] k, float[] v, float[] lse, float[] dO, float[] delta,
                             float[] dk, float[] dv, AttentionDims d, int item, float scale, bool wide)
    {
        int T = d.T, D = d.D, nB = (T + BR - 1) / BR;
        int kb = item % nB, bk = item / nB, b = bk / d.Hkv, hk = bk % d.Hkv;
        int j0 = kb * BC, nc = Math.Min(BC, T - j0);
        int qStride = d.H * D, kvStride = d.Hkv * D;
        var work = Workspace.Get(Workspace.Slot.Tile, 2 * D * BC + 2 * BR * BC + 2 * BC * D);
        fixed (float* qp = q, kp = k, vp = v, lp = lse, dop = dO, dlp = delta, dkp = dk, dvp = dv, wk = work)
        {
            float* kT = wk;                 // (D, BC)
            float* vT = kT + D * BC;        // (D, BC)
            float* S = vT + D * BC;         // (BR, BC) P
            float* dP = S + BR * BC;        // (BR, BC) dS
            float* dKacc = dP + BR * BC;    // (BC, D)
            float* dVacc = dKacc + BC * D;  // (BC, D)
            long kvOff = ((long)(b * T + j0) * d.Hkv + hk) * D;
            SmallMatrix.Transpose(kp + kvOff, nc, D, kvStride, kT, BC);
            SmallMatrix.Transpose(vp + kvOff, nc, D, kvStride, vT, BC);
            new Span<float>(dKacc, 2 * BC * D).Clear();
            for (int h = hk * d.Group; h < (hk + 1) * d.Group; h++)
                for (int i0 = j0; i0 < T; i0 += BR)     // BR = BC: tiles above the diagonal are fully masked
                {
                    int nr = Math.Min(BR, T - i0);
                    long qOff = ((long)(b * T + i0) * d.H + h) * D;
                    long rowOff = ((long)b * d.H + h) * T + i0;
                    ProbsAndScoreGrads(qp + qOff, dop + qOff, kT, vT, nr, nc, i0, j0, lp + rowOff, dlp + rowOff,
                                       qStride, D, scale, S, dP, wide);
                    SmallMatrix.Gemm(wide, nc, D, nr, S, 1, BC, dop + qOff, qStride, dVacc, D, 1f, accumulate: true);
                    SmallMatrix.Gemm(wide, nc, D, nr, dP, 1, BC, qp + qOff, qStride, dKacc, D, scale, accumulate: true);
                }
            for (int c = 0; c < nc; c++)
            {
                long off = kvOff + (long)c * kvStride;
                new Span<float>(dKacc + c * D, D).CopyTo(new Span<float>(dkp + off, D));
                new Span<float>(dVacc + c * D, D).CopyTo(new Span<float>(dvp + off, D));
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void QueryTile(float[] q, float[] k, float[] v, float[] lse, float[] dO, float[] delta,
                          float[] dq, AttentionDims d, int item, float scale, bool wide)
    {
        int T = d.T, D = d.D, nB = (T + BR - 1) / BR;
        int qb = item % nB, bh = item / nB, b = bh / d.H, h = bh % d.H, hk = h / d.Group;
        int i0 = qb * BR, nr = Math.Min(BR, T - i0), i1 = i0 + nr;
        int qStride = d.H * D, kvStride = d.Hkv * D;
        var work = Workspace.Get(Workspace.Slot.Tile, 2 * D * BC + 2 * BR * BC + BR * D);
        fixed (float* qp = q, kp = k, vp = v, lp = lse, dop = dO, dlp = delta, dqp = dq, wk = work)
        {
            float* kT = wk;                 // (D, BC)
            float* vT = kT + D * BC;        // (D, BC)
            float* S = vT + D * BC;         // (BR, BC)
            float* dP = S + BR * BC;        // (BR, BC)
            float* dQacc = dP + BR * BC;    // (BR, D)
            long qOff = ((long)(b * T + i0) * d.H + h) * D;
            long rowOff = ((long)b * d.H + h) * T + i0;
            for (int j0 = 0; j0 < i1; j0 += BC)
            {
                int nc = Math.Min(BC, i1 - j0);
                long kvOff = ((long)(b * T + j0) * d.Hkv + hk) * D;
                SmallMatrix.Transpose(kp + kvOff, nc, D, kvStride, kT, BC);
                SmallMatrix.Transpose(vp + kvOff, nc, D, kvStride, vT, BC);
                ProbsAndScoreGrads(qp + qOff, dop + qOff, kT, vT, nr, nc, i0, j0, lp + rowOff, dlp + rowOff,
                                   qStride, D, scale, S, dP, wide);
                SmallMatrix.Gemm(wide, nr, D, nc, dP, BC, 1, kp + kvOff, kvStride, dQacc, D, scale, accumulate: j0 > 0);
            }
            for (int r = 0; r < nr; r++)
                new Span<float>(dQacc + r * D, D).CopyTo(new Span<float>(dqp + qOff + (long)r * qStride, D));
        }
    }
}
