// One (batch, head) problem of the gated delta rule (docs/kernels.md §3.1), gathered from the strided
// [B,T,H,D] activations into contiguous per-head buffers so that the recurrent and chunked kernels run on
// dense [T,D] rows; plus the in-kernel L2 norm of q and k (§3.4) and its backward.
using System.Runtime.CompilerServices;
namespace TaylorCalibrate.Backend.Cpu;

/// <summary>The inputs of one (b, h) gated-delta-rule problem, contiguous and (optionally) L2-normalised.</summary>
internal sealed unsafe class GdnHead
{
    public readonly int T, K, V;
    public readonly float[] Q;      // (T, K)  normalised when L2-norm is on
    public readonly float[] Kx;     // (T, K)  normalised when L2-norm is on
    public readonly float[] Vx;     // (T, V)
    public readonly float[] G;      // (T)     log decay (≤ 0)
    public readonly float[] Beta;   // (T)
    public readonly float[]? RstdQ; // (T)     1/√(Σq² + 1e-6), saved for the backward
    public readonly float[]? RstdK; // (T)
    public readonly float[]? H0;    // (K, V)  initial state, null = zero
    // (buffers may be longer than stated; only the stated prefix is meaningful)

    /// <summary>Eps of the in-kernel L2 norm, inside the square root (fla's convention).</summary>
    public const float L2Eps = 1e-6f;

    GdnHead(int t, int k, int v, bool l2, bool hasH0)
    {
        T = t; K = k; V = v;
        // per-thread buffers (see Workspace): every element up to the stated length is written by Gather
        Q = Workspace.Get(Workspace.Slot.HeadQ, (long)t * k); Kx = Workspace.Get(Workspace.Slot.HeadK, (long)t * k); Vx = Workspace.Get(Workspace.Slot.HeadV, (long)t * v);
        G = Workspace.Get(Workspace.Slot.HeadG, t); Beta = Workspace.Get(Workspace.Slot.HeadBeta, t);
        if (l2) { RstdQ = Workspace.Get(Workspace.Slot.HeadRstdQ, t); RstdK = Workspace.Get(Workspace.Slot.HeadRstdK, t); }
        if (hasH0) H0 = Workspace.Get(Workspace.Slot.HeadH0, (long)k * v);
    }

    /// <summary>Gathers head (b, h) of q, k [B,T,H,K], v [B,T,H,V], g, beta [B,T,H], h0 [B,H,K,V].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static GdnHead Gather(float[] q, float[] k, float[] v, float[] g, float[] beta, float[]? h0,
                                 int b, int h, int T, int H, int K, int V, bool l2)
    {
        var p = new GdnHead(T, K, V, l2, h0 is not null);
        GatherRows(q, p.Q, b, h, T, H, K);
        GatherRows(k, p.Kx, b, h, T, H, K);
        GatherRows(v, p.Vx, b, h, T, H, V);
        for (int t = 0; t < T; t++)
        {
            long gi = ((long)b * T + t) * H + h;
            p.G[t] = g[gi];
            p.Beta[t] = beta[gi];
        }
        if (h0 is not null) Array.Copy(h0, ((long)b * H + h) * K * V, p.H0!, 0, (long)K * V);
        if (l2)
        {
            L2Normalise(p.Q, p.RstdQ!, T, K);
            L2Normalise(p.Kx, p.RstdK!, T, K);
        }
        return p;
    }

    /// <summary>dst (T, D) = rows of head (b, h) of src (B, T, H, D).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void GatherRows(float[] src, float[] dst, int b, int h, int T, int H, int D)
    {
        for (int t = 0; t < T; t++)
            Array.Copy(src, (((long)b * T + t) * H + h) * D, dst, (long)t * D, D);
    }

    /// <summary>Rows of head (b, h) of dst (B, T, H, D) = src (T, D).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ScatterRows(float[] src, float[] dst, int b, int h, int T, int H, int D)
    {
        for (int t = 0; t < T; t++)
            Array.Copy(src, (long)t * D, dst, (((long)b * T + t) * H + h) * D, D);
    }

    /// <summary>dst[b, t, h] = src[t] for a [B,T,H] gate tensor.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ScatterGate(float[] src, float[] dst, int b, int h, int T, int H)
    {
        for (int t = 0; t < T; t++) dst[((long)b * T + t) * H + h] = src[t];
    }

    // y = x·rstd, rstd = (Σx² + eps)^−½, per row of length D; fp32 sum of squares.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void L2Normalise(float[] x, float[] rstd, int T, int D)
    {
        fixed (float* xp = x)
            for (int t = 0; t < T; t++)
            {
                float* row = xp + (long)t * D;
                float r = 1f / MathF.Sqrt(SmallMatrix.Dot(row, row, D) + L2Eps);
                rstd[t] = r;
                SmallMatrix.ScaleInPlace(r, row, D);
            }
    }

    /// <summary>
    /// In place: dy (T, D), the gradient w.r.t. the normalised rows y, becomes the gradient w.r.t. the raw
    /// rows: dx = rstd·(dy − (dy·y)·y).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void L2NormBackward(float[] dy, float[] y, float[] rstd, int T, int D)
    {
        fixed (float* dp = dy, yp = y)
            for (int t = 0; t < T; t++)
            {
                float* d = dp + (long)t * D, yr = yp + (long)t * D;
                float dot = SmallMatrix.Dot(d, yr, D);
                SmallMatrix.Axpy(-dot, yr, d, D);          // dy − (dy·y)·y
                SmallMatrix.ScaleInPlace(rstd[t], d, D);   // · rstd
            }
    }
}

/// <summary>Gradients of one (b, h) problem (w.r.t. the normalised q, k until <see cref="GdnHead.L2NormBackward"/>).</summary>
internal sealed class GdnHeadGrads
{
    public readonly float[] DQ;    // (T, K)
    public readonly float[] DK;    // (T, K)
    public readonly float[] DV;    // (T, V)
    public readonly float[] DG;    // (T)
    public readonly float[] DBeta; // (T)
    public readonly float[] DH0;   // (K, V)  gradient w.r.t. the initial state

    public GdnHeadGrads(int T, int K, int V)
    {
        // per-thread buffers (see Workspace): both kernels write every element up to the stated length
        DQ = Workspace.Get(Workspace.Slot.GradQ, (long)T * K); DK = Workspace.Get(Workspace.Slot.GradK, (long)T * K); DV = Workspace.Get(Workspace.Slot.GradV, (long)T * V);
        DG = Workspace.Get(Workspace.Slot.GradG, T); DBeta = Workspace.Get(Workspace.Slot.GradBeta, T); DH0 = Workspace.Get(Workspace.Slot.GradH0, (long)K * V);
    }
}
