// Chunked (WY) gated delta rule on one (b, h) problem, backward. Maths: docs/kernels.md §3.3 (steps 1–5):
// the forward is replayed to recompute γ, A, w, v_new and h_c per chunk, then a reverse scan over chunks
// carries dh (the gradient w.r.t. the state at the end of the chunk) and produces every input gradient.
// Exponents are differences γ_r − γ_j (r ≥ j), γ_r and γ_last − γ_r, all ≤ 0 (§3.4).
using System.Runtime.CompilerServices;
namespace TaylorCalibrate.Backend.Cpu;

internal static unsafe class GdnChunkedBackward
{
    /// <summary>dO (T, V); dht (K, V) or null. Gradients of q, k are w.r.t. the vectors in <paramref name="p"/>.
    /// <paramref name="wide"/>: 512-bit tile products and decay rows (the same bits as the 256-bit forms).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(GdnHead p, int C, float scale, float[] dO, float[]? dht, GdnHeadGrads grads, bool wide)
    {
        int T = p.T, K = p.K, V = p.V, NT = (T + C - 1) / C;
        long KV = (long)K * V;
        var saved = new GdnChunkSaved(T, C, K, V);
        var state = Workspace.Get(Workspace.Slot.State, KV);
        if (p.H0 is null) state.AsSpan(0, (int)KV).Clear(); else p.H0.AsSpan(0, (int)KV).CopyTo(state);
        GdnChunked.Forward(p, C, scale, null, state, saved, wide);

        var dhArr = Workspace.Get(Workspace.Slot.DState, KV);   // (K, V) dL/d(state at the end of the current chunk)
        if (dht is null) dhArr.AsSpan(0, (int)KV).Clear(); else dht.AsSpan(0, (int)KV).CopyTo(dhArr);
        long CC = (long)C * C;
        var work = Workspace.Get(Workspace.Slot.ScratchBackward, 8 * CC + 5L * C * K + 4L * C * V + 2L * V * K + 2L * K * C + 2L * V * C + 2L * C);
        fixed (float* q = p.Q, k = p.Kx, v = p.Vx, dOb = dO, dh = dhArr, wk = work,
               gAll = saved.Gamma, aAll = saved.A, wAll = saved.W, vnAll = saved.VNew, hAll = saved.H,
               dq = grads.DQ, dk = grads.DK, dv = grads.DV)
        {
            var sc = new Scratch(wk);
            float* P = sc.Take(CC);     // (C, C) scale·(Q Kᵀ ⊙ M)
            float* dS = sc.Take(CC);    // (C, C) scale·(dO v_newᵀ ⊙ M)
            float* dA = sc.Take(CC);    // (C, C)
            float* tmp = sc.Take(CC);   // (C, C) Aᵀ dA
            float* AT = sc.Take(CC);    // (C, C) Aᵀ
            float* dL = sc.Take(CC);    // (C, C) −strict_lower(Aᵀ dA Aᵀ)
            float* KK = sc.Take(CC);    // (C, C) K Kᵀ
            float* Gm = sc.Take(CC);    // (C, C) dL_rj β_r e^{γ_r−γ_j}
            float* dw = sc.Take((long)C * K);    // (C, K)
            float* Kb = sc.Take((long)C * K);    // (C, K) K ⊙ βe^γ
            float* AtDw = sc.Take((long)C * K);  // (C, K) Aᵀ dw
            float* Qg = sc.Take((long)C * K);    // (C, K) Q ⊙ e^γ
            float* dkInter = sc.Take((long)C * K);
            float* dv2 = sc.Take((long)C * V);   // (C, V) dL/dv_new
            float* Vb = sc.Take((long)C * V);    // (C, V) V ⊙ β
            float* AtDu = sc.Take((long)C * V);  // (C, V) Aᵀ du
            float* hT = sc.Take((long)V * K);    // (V, K) h_cᵀ
            float* dhT = sc.Take((long)V * K);   // (V, K) dhᵀ
            float* kT = sc.Take((long)K * C);    // (K, C) Kᵀ
            float* KbT = sc.Take((long)K * C);   // (K, C) (K ⊙ βe^γ)ᵀ
            float* vnT = sc.Take((long)V * C);   // (V, C) v_newᵀ
            float* VbT = sc.Take((long)V * C);   // (V, C) (V ⊙ β)ᵀ
            float* dgam = sc.Take(C);            // (C)    dL/dγ
            float* er = sc.Take(C);              // (C)    e^{γ_r−γ_j} of one row

            for (int c = NT - 1; c >= 0; c--)
            {
                int t0 = c * C, n = Math.Min(C, T - t0);
                float* qc = q + (long)t0 * K, kc = k + (long)t0 * K, vc = v + (long)t0 * V, dOc = dOb + (long)t0 * V;
                float* dqc = dq + (long)t0 * K, dkc = dk + (long)t0 * K, dvc = dv + (long)t0 * V;
                float* gam = gAll + t0, A = aAll + c * CC, wc = wAll + (long)t0 * K, vnc = vnAll + (long)t0 * V;
                float* hc = hAll + c * KV;
                float gl = gam[n - 1];
                new Span<float>(dgam, n).Clear();

                // 1–2. dv2 = (scale·Q Kᵀ ⊙ M)ᵀ dO + (K·dh) ⊙ e^{γ_last−γ}
                SmallMatrix.Transpose(kc, n, K, K, kT, C);
                SmallMatrix.Gemm(wide, n, n, K, qc, K, 1, kT, C, P, C);
                GdnChunked.MaskDecay(P, gam, n, C, scale, strict: false, wide);
                SmallMatrix.Gemm(wide, n, V, K, kc, K, 1, dh, V, dv2, V);
                for (int r = 0; r < n; r++) SmallMatrix.ScaleInPlace(MathF.Exp(gl - gam[r]), dv2 + (long)r * V, V);
                SmallMatrix.Gemm(wide, n, V, n, P, 1, C, dOc, V, dv2, V, 1f, accumulate: true);

                // 3. dq = scale·e^γ ⊙ (dO·h_cᵀ) + dS·K;  dk = e^{γ_last−γ} ⊙ (v_new·dhᵀ) + dSᵀ·Q
                SmallMatrix.Transpose(hc, K, V, V, hT, K);
                SmallMatrix.Gemm(wide, n, K, V, dOc, V, 1, hT, K, dqc, K);
                for (int r = 0; r < n; r++) SmallMatrix.ScaleInPlace(scale * MathF.Exp(gam[r]), dqc + (long)r * K, K);
                SmallMatrix.Transpose(vnc, n, V, V, vnT, C);
                SmallMatrix.Gemm(wide, n, n, V, dOc, V, 1, vnT, C, dS, C);
                GdnChunked.MaskDecay(dS, gam, n, C, scale, strict: false, wide);
                SmallMatrix.Gemm(wide, n, K, n, dS, C, 1, kc, K, dqc, K, 1f, accumulate: true);

                SmallMatrix.Transpose(dh, K, V, V, dhT, K);
                SmallMatrix.Gemm(wide, n, K, V, vnc, V, 1, dhT, K, dkInter, K);
                float interSum = 0f;
                for (int r = 0; r < n; r++)
                {
                    float* row = dkInter + (long)r * K;
                    SmallMatrix.ScaleInPlace(MathF.Exp(gl - gam[r]), row, K);
                    interSum += SmallMatrix.Dot(kc + (long)r * K, row, K);
                }
                new Span<float>(dkInter, n * K).CopyTo(new Span<float>(dkc, n * K));
                SmallMatrix.Gemm(wide, n, K, n, dS, 1, C, qc, K, dkc, K, 1f, accumulate: true);
                // every exponent is a difference of γ's: dγ_r = q_r·dq_r − k_r·dk_r, and the last valid row
                // also gets e^{γ_last}·Σ(h_c ⊙ dh) + Σ_j k_j·dk_inter_j (through the state carried on)
                for (int r = 0; r < n; r++)
                    dgam[r] = SmallMatrix.Dot(qc + (long)r * K, dqc + (long)r * K, K) - SmallMatrix.Dot(kc + (long)r * K, dkc + (long)r * K, K);
                dgam[n - 1] += interSum + MathF.Exp(gl) * SmallMatrix.Dot(hc, dh, (int)KV);

                // 4. WY backward: dw = −dv2·h_cᵀ, du = dv2, dA = dw·Kbᵀ + du·Vbᵀ
                SmallMatrix.Gemm(wide, n, K, V, dv2, V, 1, hT, K, dw, K, -1f);
                for (int r = 0; r < n; r++)
                {
                    float br = p.Beta[t0 + r];
                    GdnChunked.ScaleRow(kc + (long)r * K, br * MathF.Exp(gam[r]), Kb + (long)r * K, K);
                    GdnChunked.ScaleRow(vc + (long)r * V, br, Vb + (long)r * V, V);
                }
                SmallMatrix.Transpose(Kb, n, K, K, KbT, C);
                SmallMatrix.Transpose(Vb, n, V, V, VbT, C);
                SmallMatrix.Gemm(wide, n, n, K, dw, K, 1, KbT, C, dA, C);
                SmallMatrix.Gemm(wide, n, n, V, dv2, V, 1, VbT, C, dA, C, 1f, accumulate: true);
                SmallMatrix.Gemm(wide, n, K, n, A, 1, C, dw, K, AtDw, K);
                SmallMatrix.Gemm(wide, n, V, n, A, 1, C, dv2, V, AtDu, V);
                for (int r = 0; r < n; r++)
                {
                    float br = p.Beta[t0 + r], eg = MathF.Exp(gam[r]);
                    float* atdw = AtDw + (long)r * K, atdu = AtDu + (long)r * V;
                    float x = SmallMatrix.Dot(kc + (long)r * K, atdw, K);
                    SmallMatrix.Axpy(br * eg, atdw, dkc + (long)r * K, K);
                    GdnChunked.ScaleRow(atdu, br, dvc + (long)r * V, V);
                    grads.DBeta[t0 + r] = eg * x + SmallMatrix.Dot(vc + (long)r * V, atdu, V);
                    dgam[r] += br * eg * x;
                }
                // through the inverse: dL = −strict_lower(Aᵀ·dA·Aᵀ)
                SmallMatrix.Gemm(wide, n, n, n, A, 1, C, dA, C, tmp, C);
                SmallMatrix.Transpose(A, n, n, C, AT, C);
                SmallMatrix.Gemm(wide, n, n, n, tmp, C, 1, AT, C, dL, C, -1f);
                // L_rj = β_r (k_r·k_j) e^{γ_r−γ_j}
                SmallMatrix.Gemm(wide, n, n, K, kc, K, 1, kT, C, KK, C);
                for (int r = 0; r < n; r++)
                {
                    float br = p.Beta[t0 + r], gr = gam[r], dbeta = 0f, rowLL = 0f;
                    float* dlr = dL + (long)r * C, kkr = KK + (long)r * C, gmr = Gm + (long)r * C;
                    GdnChunked.ExpDiffRow(gam, gr, r, er, wide);
                    for (int j = 0; j < r; j++)
                    {
                        float e = er[j];
                        float dlk = dlr[j] * kkr[j] * e;   // dL_rj·(k_r·k_j)·e^{γ_r−γ_j}
                        dbeta += dlk;
                        float ll = br * dlk;               // dL_rj·L_rj
                        rowLL += ll;
                        dgam[j] -= ll;
                        gmr[j] = dlr[j] * br * e;
                    }
                    new Span<float>(gmr + r, n - r).Clear();
                    grads.DBeta[t0 + r] += dbeta;
                    dgam[r] += rowLL;
                }
                SmallMatrix.Gemm(wide, n, K, n, Gm, C, 1, kc, K, dkc, K, 1f, accumulate: true);
                SmallMatrix.Gemm(wide, n, K, n, Gm, 1, C, kc, K, dkc, K, 1f, accumulate: true);

                // 2 (carry). dh ← e^{γ_last}·dh + scale·(Q ⊙ e^γ)ᵀ dO − wᵀ dv2
                SmallMatrix.ScaleInPlace(MathF.Exp(gl), dh, (int)KV);
                for (int r = 0; r < n; r++) GdnChunked.ScaleRow(qc + (long)r * K, MathF.Exp(gam[r]), Qg + (long)r * K, K);
                SmallMatrix.Gemm(wide, K, V, n, Qg, 1, K, dOc, V, dh, V, scale, accumulate: true);
                SmallMatrix.Gemm(wide, K, V, n, wc, 1, K, dv2, V, dh, V, -1f, accumulate: true);

                // 5. dg = reverse local cumsum of dγ
                float acc = 0f;
                for (int r = n - 1; r >= 0; r--) { acc += dgam[r]; grads.DG[t0 + r] = acc; }
            }
        }
        dhArr.AsSpan(0, (int)KV).CopyTo(grads.DH0);
    }
}
