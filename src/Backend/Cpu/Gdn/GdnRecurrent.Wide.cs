// 64-column Vector512 forms of the column passes of the token-recurrent gated delta rule (GdnRecurrent.cs).
// Why they pay: each pass sums over the K rows of the state into per-column accumulators, one fused
// multiply-add per accumulator and row, so a block of columns advances one row per FMA latency whatever its
// width. 64 columns in four zmm accumulators do twice the work per row of the 32-column ymm form.
// Each column's sum runs over the rows in the same order as in the 32-column form, so the results are
// identical (tests compare them).
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
}
