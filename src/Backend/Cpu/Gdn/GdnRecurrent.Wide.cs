// 64-column Vector512 forms of the column passes of the token-recurrent gated delta rule (GdnRecurrent.cs).
// Why they pay: each pass sums over the K rows of the state into per-column accumulators, one fused
// multiply-add per accumulator and row, so a block of columns advances one row per FMA latency whatever its
// width. 64 columns in four zmm accumulators do twice the work per row of the 32-column ymm form.
// Each column's sum runs over the rows in the same order as in the 32-column form, so the results are
// identical (tests compare them). Pass B of the backward (PassB2Wide) sums dot products over the columns,
// 16 lanes at a time instead of 8, so it agrees with PassB2 to rounding, not bit for bit.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace TaylorCalibrate.Backend.Cpu;

internal static unsafe partial class GdnRecurrent
{
    // Columns [0, 64) of the state (K rows, stride V): S ← decay·src (src may be S); kS[0..64) = Σ_i k_i·S[i, ·].
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void DecayAndAccumulate64(float* src, float* S, int K, int V, float decay, float* k, float* kS)
    {
        var vd = Vector512.Create(decay);
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float* r = S;
        float* f = src;
        for (int i = 0; i < K; i++, r += V, f += V)
        {
            var vk = Vector512.Create(k[i]);
            var x0 = Vector512.Load(f) * vd; x0.Store(r); a0 = Vector512.FusedMultiplyAdd(vk, x0, a0);
            var x1 = Vector512.Load(f + 16) * vd; x1.Store(r + 16); a1 = Vector512.FusedMultiplyAdd(vk, x1, a1);
            var x2 = Vector512.Load(f + 32) * vd; x2.Store(r + 32); a2 = Vector512.FusedMultiplyAdd(vk, x2, a2);
            var x3 = Vector512.Load(f + 48) * vd; x3.Store(r + 48); a3 = Vector512.FusedMultiplyAdd(vk, x3, a3);
        }
        a0.Store(kS); a1.Store(kS + 16); a2.Store(kS + 32); a3.Store(kS + 48);
    }

    // Columns [0, 64) of S: S ← S + k uᵀ; o[0..64) = Σ_i q_i·S[i, ·] (unscaled).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void UpdateAndRead64(float* S, int K, int V, float* k, float* u, float* q, float* o)
    {
        var u0 = Vector512.Load(u); var u1 = Vector512.Load(u + 16);
        var u2 = Vector512.Load(u + 32); var u3 = Vector512.Load(u + 48);
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float* r = S;
        for (int i = 0; i < K; i++, r += V)
        {
            var vk = Vector512.Create(k[i]);
            var vq = Vector512.Create(q[i]);
            var x0 = Vector512.FusedMultiplyAdd(vk, u0, Vector512.Load(r)); x0.Store(r); a0 = Vector512.FusedMultiplyAdd(vq, x0, a0);
            var x1 = Vector512.FusedMultiplyAdd(vk, u1, Vector512.Load(r + 16)); x1.Store(r + 16); a1 = Vector512.FusedMultiplyAdd(vq, x1, a1);
            var x2 = Vector512.FusedMultiplyAdd(vk, u2, Vector512.Load(r + 32)); x2.Store(r + 32); a2 = Vector512.FusedMultiplyAdd(vq, x2, a2);
            var x3 = Vector512.FusedMultiplyAdd(vk, u3, Vector512.Load(r + 48)); x3.Store(r + 48); a3 = Vector512.FusedMultiplyAdd(vq, x3, a3);
        }
        a0.Store(o); a1.Store(o + 16); a2.Store(o + 32); a3.Store(o + 48);
    }

    // Columns [0, 64) of prev and dS (K rows, stride V): kS = Σ_i k_i·decay·prev_i, du = Σ_i k_i·dS_i.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void PassA64(float* prev, float* dS, int K, int V, float decay, float* k, float* kS, float* du)
    {
        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        float* p = prev;
        float* d = dS;
        for (int i = 0; i < K; i++, p += V, d += V)
        {
            var vk = Vector512.Create(k[i]);
            s0 = Vector512.FusedMultiplyAdd(vk, Vector512.Load(p), s0); d0 = Vector512.FusedMultiplyAdd(vk, Vector512.Load(d), d0);
            s1 = Vector512.FusedMultiplyAdd(vk, Vector512.Load(p + 16), s1); d1 = Vector512.FusedMultiplyAdd(vk, Vector512.Load(d + 16), d1);
            s2 = Vector512.FusedMultiplyAdd(vk, Vector512.Load(p + 32), s2); d2 = Vector512.FusedMultiplyAdd(vk, Vector512.Load(d + 32), d2);
            s3 = Vector512.FusedMultiplyAdd(vk, Vector512.Load(p + 48), s3); d3 = Vector512.FusedMultiplyAdd(vk, Vector512.Load(d + 48), d3);
        }
        var vd = Vector512.Create(decay);   // S′ = decay·prev: scale the sum once
        (s0 * vd).Store(kS); (s1 * vd).Store(kS + 16); (s2 * vd).Store(kS + 32); (s3 * vd).Store(kS + 48);
        d0.Store(du); d1.Store(du + 16); d2.Store(du + 32); d3.Store(du + 48);
    }

    // PassB2 in Vector512 (V % 16 == 0): the same per-row-pair sweep, one load of dO, u, du per 16 columns
    // for two rows; the 512-bit accumulators fold to 256 bits before PassB2's reduction. Returns dg.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float PassB2Wide(float* prev, float* dS, int K, int V, float decay, float scale, float beta, float* q, float* k,
                                     float* dO, float* u, float* du, float udo, float* dk, float* dq)
    {
        var vdec = Vector512.Create(decay);
        var g = Vector512<float>.Zero;   // Σ prev⊙dS′ (times decay at the end)
        for (int i = 0; i + 2 <= K; i += 2)
        {
            float* p0 = prev + (long)i * V, p1 = p0 + V;
            float* d0 = dS + (long)i * V, d1 = d0 + V;
            var sq0 = Vector512.Create(scale * q[i]); var sq1 = Vector512.Create(scale * q[i + 1]);
            var nbk0 = Vector512.Create(-beta * k[i]); var nbk1 = Vector512.Create(-beta * k[i + 1]);
            Vector512<float> du0 = default, du1 = default;   // d_i·u
            Vector512<float> pu0 = default, pu1 = default;   // prev_i·du
            Vector512<float> po0 = default, po1 = default;   // prev_i·dO
            for (int j = 0; j < V; j += 16)
            {
                var vo = Vector512.Load(dO + j);
                var vu = Vector512.Load(u + j);
                var vdu = Vector512.Load(du + j);
                var x0 = Vector512.Load(p0 + j);
                var e0 = Vector512.FusedMultiplyAdd(sq0, vo, Vector512.Load(d0 + j));   // d = dS + sq·dO
                du0 = Vector512.FusedMultiplyAdd(e0, vu, du0);
                pu0 = Vector512.FusedMultiplyAdd(x0, vdu, pu0);
                po0 = Vector512.FusedMultiplyAdd(x0, vo, po0);
                e0 = Vector512.FusedMultiplyAdd(nbk0, vdu, e0);                         // dS′ = d − βk·du
                g = Vector512.FusedMultiplyAdd(x0, e0, g);
                (e0 * vdec).Store(d0 + j);
                var x1 = Vector512.Load(p1 + j);
                var e1 = Vector512.FusedMultiplyAdd(sq1, vo, Vector512.Load(d1 + j));
                du1 = Vector512.FusedMultiplyAdd(e1, vu, du1);
                pu1 = Vector512.FusedMultiplyAdd(x1, vdu, pu1);
                po1 = Vector512.FusedMultiplyAdd(x1, vo, po1);
                e1 = Vector512.FusedMultiplyAdd(nbk1, vdu, e1);
                g = Vector512.FusedMultiplyAdd(x1, e1, g);
                (e1 * vdec).Store(d1 + j);
            }
            var r = Sum4(Fold(du0), Fold(du1), Fold(pu0), Fold(pu1));   // (d_i·u, d_{i+1}·u, prev_i·du, prev_{i+1}·du)
            var ro = Sum4(Fold(po0), Fold(po1), Fold(po0), Fold(po1));  // (prev_i·dO, prev_{i+1}·dO, …)
            float bd = beta * decay;                                    // S′·du = decay·(prev·du)
            dk[i] = r.GetElement(0) - bd * r.GetElement(2);
            dk[i + 1] = r.GetElement(1) - bd * r.GetElement(3);
            dq[i] = scale * (decay * ro.GetElement(0) + k[i] * udo);
            dq[i + 1] = scale * (decay * ro.GetElement(1) + k[i + 1] * udo);
        }
        return decay * Vector256.Sum(Fold(g));
    }

    // Lower + upper 256-bit halves.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Fold(Vector512<float> x) => x.GetLower() + x.GetUpper();
}
