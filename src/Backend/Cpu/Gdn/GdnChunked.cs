// Chunked (WY) gated delta rule on one (b, h) problem, forward. Maths: docs/kernels.md §3.2 (steps 1–6) and the
// numerical rules of §3.4. On the CPU a chunk's rows are simply n ≤ C valid rows (no padding), so the
// partial last chunk needs no masking of padded rows; exponents are always differences γ_r − γ_j with r ≥ j
// (or γ_last − γ_r, γ_r), which are ≤ 0 for g ≤ 0.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
namespace TaylorCalibrate.Backend.Cpu;

/// <summary>What the chunked forward keeps for the backward (recomputed there, never returned to callers).</summary>
internal sealed class GdnChunkSaved(int T, int C, int K, int V)
{
    // per-thread buffers (see Workspace), fully written by the forward
    public readonly float[] Gamma = Workspace.Get(Workspace.Slot.SavedGamma, T);                         // (T)        local cumsum of g per chunk
    public readonly float[] A = Workspace.Get(Workspace.Slot.SavedA, (long)((T + C - 1) / C) * C * C);  // (NT, C, C) (I + L)⁻¹
    public readonly float[] W = Workspace.Get(Workspace.Slot.SavedW, (long)T * K);                       // (T, K)     w = A·(K ⊙ βe^γ)
    public readonly float[] VNew = Workspace.Get(Workspace.Slot.SavedVNew, (long)T * V);                 // (T, V)     u − w·h_c
    public readonly float[] H = Workspace.Get(Workspace.Slot.SavedH, (long)((T + C - 1) / C) * K * V);  // (NT, K, V) state at chunk start
}

/// <summary>Bump allocator over one pinned float buffer (per-worker scratch of the chunked kernels).</summary>
internal unsafe struct Scratch(float* start)
{
    float* next = start;
    public float* Take(long n) { var p = next; next += n; return p; }
}

internal static unsafe class GdnChunked
{
    /// <summary>
    /// o (T, V) (null: no output), state (K, V): h0 or zeros on entry, final state on exit; saved (null: keep
    /// nothing) receives γ, A, w, v_new and h_c of every chunk. <paramref name="wide"/>: 512-bit tile products
    /// and decay rows (the same bits as the 256-bit forms).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Forward(GdnHead p, int C, float scale, float[]? o, float[] state, GdnChunkSaved? saved, bool wide)
    {
        int T = p.T, K = p.K, V = p.V, NT = (T + C - 1) / C;
        long KV = (long)K * V;
        var work = Workspace.Get(Workspace.Slot.Scratch, C + 3L * K * C + 3L * C * C + 2L * C * V);
        var oDummy = o ?? [];
        var gs = saved?.Gamma ?? [];
        var As = saved?.A ?? [];
        var ws = saved?.W ?? [];
        var vs = saved?.VNew ?? [];
        var hs = saved?.H ?? [];
        fixed (float* q = p.Q, k = p.Kx, v = p.Vx, h = state, ob = oDummy, wk = work,
               gAll = gs, aAll = As, wAll = ws, vAll = vs, hAll = hs)
        {
            var sc = new Scratch(wk);
            float* gamLocal = sc.Take(C);   // (C)
            float* kT = sc.Take((long)K * C);   // (K, C) Kᵀ of the chunk
            float* KK = sc.Take((long)C * C);   // (C, C) K Kᵀ
            float* QK = sc.Take((long)C * C);   // (C, C) Q Kᵀ, then masked with decays
            float* aLocal = sc.Take((long)C * C);
            float* Kb = sc.Take((long)C * K);   // (C, K) K ⊙ βe^γ, later Q ⊙ e^γ
            float* wLocal = sc.Take((long)C * K);
            float* Vb = sc.Take((long)C * V);   // (C, V) V ⊙ β, later v_new ⊙ e^{γ_last−γ}
            float* vnLocal = sc.Take((long)C * V);
            for (int c = 0; c < NT; c++)
            {
                int t0 = c * C, n = Math.Min(C, T - t0);
                float* qc = q + (long)t0 * K, kc = k + (long)t0 * K, vc = v + (long)t0 * V;
                float* gam = saved is null ? gamLocal : gAll + t0;
                float* A = saved is null ? aLocal : aAll + (long)c * C * C;
                float* w = saved is null ? wLocal : wAll + (long)t0 * K;
                float* vn = saved is null ? vnLocal : vAll + (long)t0 * V;
                if (saved is not null) new Span<float>(h, (int)KV).CopyTo(new Span<float>(hAll + c * KV, (int)KV));

                // 1. local cumsum γ (fp32)
                float acc = 0f;
                for (int r = 0; r < n; r++) { acc += p.G[t0 + r]; gam[r] = acc; }
                float gl = gam[n - 1];

                // 2–3. L = strict_lower(β_r (k_r·k_j) e^{γ_r−γ_j}), A = (I + L)⁻¹ by forward substitution
                SmallMatrix.Transpose(kc, n, K, K, kT, C);
                SmallMatrix.Gemm(wide, n, n, K, kc, K, 1, kT, C, KK, C);
                InvertUnitLower(KK, p.Beta, t0, gam, n, C, A, wide);

                // 4. WY: w = A·(K ⊙ βe^γ), u = A·(V ⊙ β)
                for (int r = 0; r < n; r++)
                {
                    float br = p.Beta[t0 + r];
                    ScaleRow(kc + (long)r * K, br * MathF.Exp(gam[r]), Kb + (long)r * K, K);
                    ScaleRow(vc + (long)r * V, br, Vb + (long)r * V, V);
                }
                SmallMatrix.Gemm(wide, n, K, n, A, C, 1, Kb, K, w, K);
                SmallMatrix.Gemm(wide, n, V, n, A, C, 1, Vb, V, vn, V);
                // 5a. v_new = u − w·h_c
                SmallMatrix.Gemm(wide, n, V, K, w, K, 1, h, V, vn, V, -1f, accumulate: true);

                // 6. o = scale·[(Q ⊙ e^γ)·h_c + (Q Kᵀ ⊙ M)·v_new]
                if (o is not null)
                {
                    float* oc = ob + (long)t0 * V;
                    for (int r = 0; r < n; r++) ScaleRow(qc + (long)r * K, MathF.Exp(gam[r]), Kb + (long)r * K, K);
                    SmallMatrix.Gemm(wide, n, V, K, Kb, K, 1, h, V, oc, V, scale);
                    SmallMatrix.Gemm(wide, n, n, K, qc, K, 1, kT, C, QK, C);
                    MaskDecay(QK, gam, n, C, 1f, strict: false, wide);
                    SmallMatrix.Gemm(wide, n, V, n, QK, C, 1, vn, V, oc, V, scale, accumulate: true);
                }

                // 5b. h ← e^{γ_last}·h + Kᵀ·(v_new ⊙ e^{γ_last−γ})
                SmallMatrix.ScaleInPlace(MathF.Exp(gl), h, (int)KV);
                for (int r = 0; r < n; r++) ScaleRow(vn + (long)r * V, MathF.Exp(gl - gam[r]), Vb + (long)r * V, V);
                SmallMatrix.Gemm(wide, K, V, n, kc, 1, K, Vb, V, h, V, 1f, accumulate: true);
            }
        }
    }

    /// <summary>
    /// A (n×n of a C-strided tile, zero above the diagonal) = (I + L)⁻¹ with
    /// L_rj = β_r·KK_rj·e^{γ_r−γ_j} for j &lt; r: row r of A = e_r − Σ_{m&lt;r} L_rm·(row m of A).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void InvertUnitLower(float* KK, float[] beta, int t0, float* gam, int n, int C, float* A, bool wide)
    {
        for (int r = 0; r < n; r++)
        {
            float* ar = A + (long)r * C;
            new Span<float>(ar, C).Clear();
            ar[r] = 1f;
            float* lr = KK + (long)r * C;
            DecayRow(lr, gam, gam[r], r, beta[t0 + r], wide);   // row r of L, in place of K Kᵀ
            for (int m = 0; m < r; m++)
                if (lr[m] != 0f) SmallMatrix.Axpy(-lr[m], A + (long)m * C, ar, m + 1);
        }
    }

    /// <summary>
    /// X_rj ← s·X_rj·e^{γ_r−γ_j} for j ≤ r (j &lt; r when strict), 0 elsewhere; the exponent is masked
    /// before exp, so it is always ≤ 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MaskDecay(float* X, float* gam, int n, int C, float s, bool strict, bool wide)
    {
        for (int r = 0; r < n; r++)
        {
            float* xr = X + (long)r * C;
            int count = strict ? r : r + 1;
            DecayRow(xr, gam, gam[r], count, s, wide);
            for (int j = count; j < n; j++) xr[j] = 0f;
        }
    }

    /// <summary>x[j] ← s·x[j]·e^{gr − γ_j} for j &lt; count (callers pass count ≤ r + 1, so exponents are ≤ 0).
    /// The wide form takes 16 columns at a time, then the same 8-column and scalar steps, so each column
    /// goes through the same exp (vector or scalar) in both forms and the bits agree.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void DecayRow(float* x, float* gam, float gr, int count, float s, bool wide)
    {
        int j = 0;
        if (wide)
        {
            var wg = Vector512.Create(gr);
            var ws = Vector512.Create(s);
            for (; j + 16 <= count; j += 16)
                (Vector512.Load(x + j) * ws * Vector512.Exp(wg - Vector512.Load(gam + j))).Store(x + j);
        }
        var vg = Vector256.Create(gr);
        var vs = Vector256.Create(s);
        for (; j + 8 <= count; j += 8)
            (Vector256.Load(x + j) * vs * Vector256.Exp(vg - Vector256.Load(gam + j))).Store(x + j);
        for (; j < count; j++) x[j] *= s * MathF.Exp(gr - gam[j]);
    }

    /// <summary>e[j] = e^{gr − γ_j} for j &lt; count (exponents ≤ 0 as in <see cref="DecayRow"/>), in the same
    /// 16-, 8-column and scalar steps, so both widths give the same bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ExpDiffRow(float* gam, float gr, int count, float* e, bool wide)
    {
        int j = 0;
        if (wide)
        {
            var wg = Vector512.Create(gr);
            for (; j + 16 <= count; j += 16) Vector512.Exp(wg - Vector512.Load(gam + j)).Store(e + j);
        }
        var vg = Vector256.Create(gr);
        for (; j + 8 <= count; j += 8) Vector256.Exp(vg - Vector256.Load(gam + j)).Store(e + j);
        for (; j < count; j++) e[j] = MathF.Exp(gr - gam[j]);
    }

    /// <summary>dst[0..n) = a·src[0..n).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ScaleRow(float* src, float a, float* dst, int n)
    {
        var va = Vector256.Create(a);
        int i = 0;
        for (; i + 8 <= n; i += 8) (Vector256.Load(src + i) * va).Store(dst + i);
        for (; i < n; i++) dst[i] = a * src[i];
    }
}
