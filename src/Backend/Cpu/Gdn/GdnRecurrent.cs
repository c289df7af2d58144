// Token-recurrent gated delta rule on one (b, h) problem, forward and backward (BPTT with recomputation).
// Maths: docs/kernels.md §3.1. The state S is [K,V] row-major (row i = key coordinate i), fp32, and every token
// step sweeps its rows twice with Vector256 over the V columns (64-column Vector512 blocks, and pass B of the
// backward in Vector512, when the backend runs 512-bit vectors: GdnRecurrent.Wide.cs), so S (≤ 256 KiB at
// K = V = 256, 16 KiB at 64) stays in L1/L2.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TaylorCalibrate.Backend.Cpu;

internal static unsafe partial class GdnRecurrent
{
    /// <summary>
    /// o (T, V) = outputs; state (K, V) holds h0 (or zeros) on entry and the final state on exit.
    /// With o null the steps only advance the state (recomputation in the backward).
    /// </summary>
    /// <remarks>With <paramref name="src"/> given, the state before token t0 is read from src (K, V) instead of S
    /// (out of place: the backward's replay steps from one saved state to the next without a copy).
    /// <paramref name="wide"/>: 64-column Vector512 blocks (the same bits as the 32-column Vector256 ones).</remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Forward(GdnHead p, int t0, int t1, float scale, float* S, float* o, float* work, bool wide, float* src = null)
    {
        int K = p.K, V = p.V;
        float* kS = work;        // (V)  Sᵀk after the decay
        float* u = work + V;     // (V)  β(v − Sᵀk)
        fixed (float* q = p.Q, k = p.Kx, v = p.Vx)
        {
            for (int t = t0; t < t1; t++)
            {
                float* qt = q + (long)t * K, kt = k + (long)t * K, vt = v + (long)t * V;
                float decay = MathF.Exp(p.G[t]);   // g ≤ 0, so no overflow
                float beta = p.Beta[t];
                // Columns of S are independent within a step, so blocks of 32 columns keep their
                // accumulators (kS, o) in registers; the V % 32 tail columns go row by row.
                int vb = V - V % 32, vw = wide ? V - V % 64 : 0;
                // pass 1: S ← e^g·S and kS = Sᵀk
                float* from = t == t0 && src != null ? src : S;
                for (int j0 = 0; j0 < vw; j0 += 64) DecayAndAccumulate64(from + j0, S + j0, K, V, decay, kt, kS + j0);
                for (int j0 = vw; j0 < vb; j0 += 32) DecayAndAccumulate32(from + j0, S + j0, K, V, decay, kt, kS + j0);
                if (vb < V)
                {
                    new Span<float>(kS + vb, V - vb).Clear();
                    for (int i = 0; i < K; i++)
                        DecayAndAccumulate(from + (long)i * V + vb, S + (long)i * V + vb, decay, kt[i], kS + vb, V - vb);
                }
                for (int j = 0; j < V; j++) u[j] = beta * (vt[j] - kS[j]);
                // pass 2: S ← S + k uᵀ and o = scale·Sᵀq (o = null: state only)
                float* ot = o is null ? kS : o + (long)t * V;   // kS is dead here: a sink for the unused read
                for (int j0 = 0; j0 < vw; j0 += 64) UpdateAndRead64(S + j0, K, V, kt, u + j0, qt, ot + j0);
                for (int j0 = vw; j0 < vb; j0 += 32) UpdateAndRead32(S + j0, K, V, kt, u + j0, qt, ot + j0);
                if (vb < V)
                {
                    new Span<float>(ot + vb, V - vb).Clear();
                    for (int i = 0; i < K; i++) UpdateAndRead(S + (long)i * V + vb, kt[i], u + vb, qt[i], ot + vb, V - vb);
                }
                if (o is not null) SmallMatrix.ScaleInPlace(scale, ot, V);
            }
        }
    }

    // Columns [0, 32) of the state (K rows, stride V): S ← decay·src (src may be S);
    // kS[0..32) = Σ_i k_i·S[i, ·].
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void DecayAndAccumulate32(float* src, float* S, int K, int V, float decay, float* k, float* kS)
    {
        var vd = Vector256.Create(decay);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float* r = S;
        float* f = src;
        for (int i = 0; i < K; i++, r += V, f += V)
        {
            var vk = Vector256.Create(k[i]);
            var x0 = Vector256.Load(f) * vd; x0.Store(r); a0 = Vector256.FusedMultiplyAdd(vk, x0, a0);
            var x1 = Vector256.Load(f + 8) * vd; x1.Store(r + 8); a1 = Vector256.FusedMultiplyAdd(vk, x1, a1);
            var x2 = Vector256.Load(f + 16) * vd; x2.Store(r + 16); a2 = Vector256.FusedMultiplyAdd(vk, x2, a2);
            var x3 = Vector256.Load(f + 24) * vd; x3.Store(r + 24); a3 = Vector256.FusedMultiplyAdd(vk, x3, a3);
        }
        a0.Store(kS); a1.Store(kS + 8); a2.Store(kS + 16); a3.Store(kS + 24);
    }

    // Columns [0, 32) of S: S ← S + k uᵀ; o[0..32) = Σ_i q_i·S[i, ·] (unscaled).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void UpdateAndRead32(float* S, int K, int V, float* k, float* u, float* q, float* o)
    {
        var u0 = Vector256.Load(u); var u1 = Vector256.Load(u + 8);
        var u2 = Vector256.Load(u + 16); var u3 = Vector256.Load(u + 24);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float* r = S;
        for (int i = 0; i < K; i++, r += V)
        {
            var vk = Vector256.Create(k[i]);
            var vq = Vector256.Create(q[i]);
            var x0 = Vector256.FusedMultiplyAdd(vk, u0, Vector256.Load(r)); x0.Store(r); a0 = Vector256.FusedMultiplyAdd(vq, x0, a0);
            var x1 = Vector256.FusedMultiplyAdd(vk, u1, Vector256.Load(r + 8)); x1.Store(r + 8); a1 = Vector256.FusedMultiplyAdd(vq, x1, a1);
            var x2 = Vector256.FusedMultiplyAdd(vk, u2, Vector256.Load(r + 16)); x2.Store(r + 16); a2 = Vector256.FusedMultiplyAdd(vq, x2, a2);
            var x3 = Vector256.FusedMultiplyAdd(vk, u3, Vector256.Load(r + 24)); x3.Store(r + 24); a3 = Vector256.FusedMultiplyAdd(vq, x3, a3);
        }
        a0.Store(o); a1.Store(o + 8); a2.Store(o + 16); a3.Store(o + 24);
    }

    // row ← decay·from (from may be row); acc += a·row
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void DecayAndAccumulate(float* from, float* row, float decay, float a, float* acc, int n)
    {
        var vd = Vector256.Create(decay);
        var va = Vector256.Create(a);
        int j = 0;
        for (; j + 8 <= n; j += 8)
        {
            var r = Vector256.Load(from + j) * vd;
            r.Store(row + j);
            Vector256.FusedMultiplyAdd(va, r, Vector256.Load(acc + j)).Store(acc + j);
        }
        for (; j < n; j++)
        {
            float r = from[j] * decay;
            row[j] = r;
            acc[j] = MathF.FusedMultiplyAdd(a, r, acc[j]);
        }
    }

    // row ← row + a·u; acc += c·row
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void UpdateAndRead(float* row, float a, float* u, float c, float* acc, int n)
    {
        var va = Vector256.Create(a);
        var vc = Vector256.Create(c);
        int j = 0;
        for (; j + 8 <= n; j += 8)
        {
            var r = Vector256.FusedMultiplyAdd(va, Vector256.Load(u + j), Vector256.Load(row + j));
            r.Store(row + j);
            Vector256.FusedMultiplyAdd(vc, r, Vector256.Load(acc + j)).Store(acc + j);
        }
        for (; j < n; j++)
        {
            float r = MathF.FusedMultiplyAdd(a, u[j], row[j]);
            row[j] = r;
            acc[j] = MathF.FusedMultiplyAdd(c, r, acc[j]);
        }
    }

    /// <summary>
    /// BPTT (docs/kernels.md §3.1). States are recomputed: checkpoints every <c>seg</c> tokens, then each segment's
    /// states are replayed forward into a buffer and walked backwards. dht (K, V) may be null.
    /// Gradients of q, k are w.r.t. the (normalised) vectors in <paramref name="p"/>. <paramref name="wide"/>: the
    /// Vector512 column passes (pass B sums its dot products over 16 lanes instead of 8, so its results
    /// differ from the 256-bit form's by rounding only).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Backward(GdnHead p, float[] dO, float[]? dht, float scale, GdnHeadGrads grads, bool wide)
    {
        int T = p.T, K = p.K, V = p.V, KV = K * V;
        // Segment length: the replay buffer holds seg states; cap it at ~4 MiB per worker.
        int seg = Math.Clamp((1 << 20) / KV, 1, 64);
        int nSeg = (T + seg - 1) / seg;
        var checkpoints = Workspace.Get(Workspace.Slot.Checkpoints, (long)nSeg * KV);  // (nSeg, K, V) state before token s·seg
        var replay = Workspace.Get(Workspace.Slot.Replay, (long)seg * KV);             // (seg, K, V)  state before each token of a segment
        var dS = Workspace.Get(Workspace.Slot.DState, KV);                             // (K, V) gradient w.r.t. the current state
        var S = Workspace.Get(Workspace.Slot.State, KV);                               // (K, V) state of the forward sweep
        var work = Workspace.Get(Workspace.Slot.ScratchBackward, 6 * V + 2 * K);
        fixed (float* ck = checkpoints, rp = replay, ds = dS, wk = work)
        {
            // forward sweep, saving checkpoints
            if (p.H0 is null) S.AsSpan(0, KV).Clear(); else p.H0.AsSpan(0, KV).CopyTo(S);
            fixed (float* s = S)
                for (int sg = 0; sg < nSeg; sg++)
                {
                    new Span<float>(s, KV).CopyTo(new Span<float>(ck + (long)sg * KV, KV));
                    Forward(p, sg * seg, Math.Min(T, (sg + 1) * seg), scale, s, null, wk, wide);
                }
            if (dht is null) dS.AsSpan(0, KV).Clear(); else dht.AsSpan(0, KV).CopyTo(dS);
            fixed (float* dOp = dO)
                for (int sg = nSeg - 1; sg >= 0; sg--)
                {
                    int a = sg * seg, b = Math.Min(T, a + seg);
                    new Span<float>(ck + (long)sg * KV, KV).CopyTo(new Span<float>(rp, KV));
                    for (int t = a; t < b - 1; t++)
                        Forward(p, t, t + 1, scale, rp + (long)(t - a + 1) * KV, null, wk, wide, src: rp + (long)(t - a) * KV);
                    for (int t = b - 1; t >= a; t--) Step(p, t, rp + (long)(t - a) * KV, ds, dOp + (long)t * V, scale, grads, wk, wide);
                }
        }
        dS.AsSpan(0, KV).CopyTo(grads.DH0);
    }

    // One reverse step at token t. prev = S_{t−1} (K, V); dS (K, V) = dL/dS_t on entry, dL/dS_{t−1} on exit.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Step(GdnHead p, int t, float* prev, float* dS, float* dOt, float scale, GdnHeadGrads grads, float* work, bool wide)
    {
        int K = p.K, V = p.V;
        float decay = MathF.Exp(p.G[t]);
        float beta = p.Beta[t];
        float* kS = work;            // (V) S′ᵀk, S′ = e^g·S_{t−1}
        float* du = work + V;        // (V) dSᵀk after adding scale·q dOᵀ
        float* u = work + 2 * V;     // (V)
        fixed (float* q = p.Q, k = p.Kx, v = p.Vx, dq = grads.DQ, dk = grads.DK, dv = grads.DV)
        {
            float* qt = q + (long)t * K, kt = k + (long)t * K, vt = v + (long)t * V;
            float qk = SmallMatrix.Dot(qt, kt, K);
            // pass A: kS = S′ᵀk, du = dSᵀk; column blocks of 32 keep both in registers, tail row by row
            int vb = V - V % 32, vw = wide ? V - V % 64 : 0;
            for (int j0 = 0; j0 < vw; j0 += 64) PassA64(prev + j0, dS + j0, K, V, decay, kt, kS + j0, du + j0);
            for (int j0 = vw; j0 < vb; j0 += 32) PassA32(prev + j0, dS + j0, K, V, decay, kt, kS + j0, du + j0);
            if (vb < V)
            {
                new Span<float>(kS + vb, V - vb).Clear();
                new Span<float>(du + vb, V - vb).Clear();
                for (int i = 0; i < K; i++)
                    PassA(prev + (long)i * V + vb, dS + (long)i * V + vb, decay, kt[i], kS + vb, du + vb, V - vb);
            }
            // du += scale·(q·k)·dO  (the dS += scale·q dOᵀ term, seen through k)
            SmallMatrix.Axpy(scale * qk, dOt, du, V);
            float dbeta = 0f, udo = 0f;
            float* dvt = dv + (long)t * V;
            for (int j = 0; j < V; j++)
            {
                float r = vt[j] - kS[j];
                u[j] = beta * r;
                dbeta = MathF.FusedMultiplyAdd(du[j], r, dbeta);
                dvt[j] = beta * du[j];
                udo = MathF.FusedMultiplyAdd(u[j], dOt[j], udo);
            }
            // pass B: dS += scale·q dOᵀ; dk; dq; dS′ = dS − β k duᵀ; dg = Σ S′⊙dS′; dS ← e^g·dS′
            float dg = 0f;
            float* dqt = dq + (long)t * K, dkt = dk + (long)t * K;
            int i0 = 0;
            if (wide && V % 16 == 0)
            {
                i0 = K - K % 2;
                dg = PassB2Wide(prev, dS, K, V, decay, scale, beta, qt, kt, dOt, u, du, udo, dkt, dqt);
            }
            else if (Avx.IsSupported && V % 8 == 0)
            {
                // Rows in pairs (PassB2); the odd last row, if any, goes through the row kernel below.
                i0 = K - K % 2;
                dg = PassB2(prev, dS, K, V, decay, scale, beta, qt, kt, dOt, u, du, udo, dkt, dqt);
            }
            for (int i = i0; i < K; i++)
            {
                PassB(prev + (long)i * V, dS + (long)i * V, decay, scale * qt[i], beta * kt[i], dOt, u, du, V,
                      out float dSu, out float spdu, out float spdsp, out float pdo);
                dkt[i] = dSu - beta * spdu;
                dqt[i] = scale * (decay * pdo + kt[i] * udo);   // (S_t dO)_i = S′_i·dO + k_i (u·dO)
                dg += spdsp;
            }
            grads.DG[t] = dg;
            grads.DBeta[t] = dbeta;
        }
    }

    // Columns [0, 32) of prev and dS (K rows, stride V): kS = Σ_i k_i·decay·prev_i, du = Σ_i k_i·dS_i.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void PassA32(float* prev, float* dS, int K, int V, float decay, float* k, float* kS, float* du)
    {
        Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
        Vector256<float> d0 = default, d1 = default, d2 = default, d3 = default;
        float* p = prev;
        float* d = dS;
        for (int i = 0; i < K; i++, p += V, d += V)
        {
            var vk = Vector256.Create(k[i]);
            s0 = Vector256.FusedMultiplyAdd(vk, Vector256.Load(p), s0); d0 = Vector256.FusedMultiplyAdd(vk, Vector256.Load(d), d0);
            s1 = Vector256.FusedMultiplyAdd(vk, Vector256.Load(p + 8), s1); d1 = Vector256.FusedMultiplyAdd(vk, Vector256.Load(d + 8), d1);
            s2 = Vector256.FusedMultiplyAdd(vk, Vector256.Load(p + 16), s2); d2 = Vector256.FusedMultiplyAdd(vk, Vector256.Load(d + 16), d2);
            s3 = Vector256.FusedMultiplyAdd(vk, Vector256.Load(p + 24), s3); d3 = Vector256.FusedMultiplyAdd(vk, Vector256.Load(d + 24), d3);
        }
        var vd = Vector256.Create(decay);   // S′ = decay·prev: scale the sum once
        (s0 * vd).Store(kS); (s1 * vd).Store(kS + 8); (s2 * vd).Store(kS + 16); (s3 * vd).Store(kS + 24);
        d0.Store(du); d1.Store(du + 8); d2.Store(du + 16); d3.Store(du + 24);
    }

    // Tail columns, one row: kS += k_i·decay·prev_i; du += k_i·dS_i.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PassA(float* prev, float* dS, float decay, float ki, float* kS, float* du, int n)
    {
        var vk = Vector256.Create(ki);
        var vkd = Vector256.Create(ki * decay);
        int j = 0;
        for (; j + 8 <= n; j += 8)
        {
            Vector256.FusedMultiplyAdd(vkd, Vector256.Load(prev + j), Vector256.Load(kS + j)).Store(kS + j);
            Vector256.FusedMultiplyAdd(vk, Vector256.Load(dS + j), Vector256.Load(du + j)).Store(du + j);
        }
        for (; j < n; j++)
        {
            kS[j] = MathF.FusedMultiplyAdd(ki * decay, prev[j], kS[j]);
            du[j] = MathF.FusedMultiplyAdd(ki, dS[j], du[j]);
        }
    }

    // Pass B for rows [0, K − K % 2) in pairs, V % 8 == 0 (same maths as PassB, which stays the reference).
    // Per row PassB loads dO, u, du again and ends in four horizontal sums, which dominated at V = 64–128.
    // Here one load of dO, u, du per 8 columns serves two rows; the per-row dot products stay in vector
    // accumulators (6) and are reduced together by one hadd tree (Sum4); and dg = Σ_i S′_i·dS′_i is one
    // vector accumulator over all rows (e^g·Σ prev⊙dS′), reduced once. Returns dg for these rows.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float PassB2(float* prev, float* dS, int K, int V, float decay, float scale, float beta, float* q, float* k,
                        float* dO, float* u, float* du, float udo, float* dk, float* dq)
    {
        var vdec = Vector256.Create(decay);
        var g = Vector256<float>.Zero;   // Σ prev⊙dS′ (times decay at the end)
        for (int i = 0; i + 2 <= K; i += 2)
        {
            float* p0 = prev + (long)i * V, p1 = p0 + V;
            float* d0 = dS + (long)i * V, d1 = d0 + V;
            var sq0 = Vector256.Create(scale * q[i]); var sq1 = Vector256.Create(scale * q[i + 1]);
            var nbk0 = Vector256.Create(-beta * k[i]); var nbk1 = Vector256.Create(-beta * k[i + 1]);
            Vector256<float> du0 = default, du1 = default;   // d_i·u
            Vector256<float> pu0 = default, pu1 = default;   // prev_i·du
            Vector256<float> po0 = default, po1 = default;   // prev_i·dO
            for (int j = 0; j < V; j += 8)
            {
                var vo = Vector256.Load(dO + j);
                var vu = Vector256.Load(u + j);
                var vdu = Vector256.Load(du + j);
                var x0 = Vector256.Load(p0 + j);
                var e0 = Vector256.FusedMultiplyAdd(sq0, vo, Vector256.Load(d0 + j));   // d = dS + sq·dO
                du0 = Vector256.FusedMultiplyAdd(e0, vu, du0);
                pu0 = Vector256.FusedMultiplyAdd(x0, vdu, pu0);
                po0 = Vector256.FusedMultiplyAdd(x0, vo, po0);
                e0 = Vector256.FusedMultiplyAdd(nbk0, vdu, e0);                         // dS′ = d − βk·du
                g = Vector256.FusedMultiplyAdd(x0, e0, g);
                (e0 * vdec).Store(d0 + j);
                var x1 = Vector256.Load(p1 + j);
                var e1 = Vector256.FusedMultiplyAdd(sq1, vo, Vector256.Load(d1 + j));
                du1 = Vector256.FusedMultiplyAdd(e1, vu, du1);
                pu1 = Vector256.FusedMultiplyAdd(x1, vdu, pu1);
                po1 = Vector256.FusedMultiplyAdd(x1, vo, po1);
                e1 = Vector256.FusedMultiplyAdd(nbk1, vdu, e1);
                g = Vector256.FusedMultiplyAdd(x1, e1, g);
                (e1 * vdec).Store(d1 + j);
            }
            var r = Sum4(du0, du1, pu0, pu1);        // (d_i·u, d_{i+1}·u, prev_i·du, prev_{i+1}·du)
            var ro = Sum4(po0, po1, po0, po1);       // (prev_i·dO, prev_{i+1}·dO, …)
            float bd = beta * decay;                 // S′·du = decay·(prev·du)
            dk[i] = r.GetElement(0) - bd * r.GetElement(2);
            dk[i + 1] = r.GetElement(1) - bd * r.GetElement(3);
            dq[i] = scale * (decay * ro.GetElement(0) + k[i] * udo);
            dq[i + 1] = scale * (decay * ro.GetElement(1) + k[i + 1] * udo);
        }
        return decay * Vector256.Sum(g);
    }

    // (Σa, Σb, Σc, Σd) of four vectors: two rounds of hadd leave the low/high-lane partial sums, then one add.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<float> Sum4(Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> d)
    {
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a, b), Avx.HorizontalAdd(c, d));
        return h.GetLower() + h.GetUpper();
    }

    // Row i of the reverse step: d = dS_i + sq·dO; dSu = d·u; S′ = decay·prev; spdu = S′·du;
    // dS′ = d − bk·du; spdsp = S′·dS′; dS_i ← decay·dS′; pdo = prev_i·dO.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void PassB(float* prev, float* dS, float decay, float sq, float bk, float* dO, float* u, float* du, int n,
                      out float dSu, out float spdu, out float spdsp, out float pdo)
    {
        var vdec = Vector256.Create(decay);
        var vsq = Vector256.Create(sq);
        var vbk = Vector256.Create(bk);
        Vector256<float> a1 = default, a2 = default, a3 = default, a4 = default;
        int j = 0;
        for (; j + 8 <= n; j += 8)
        {
            var d = Vector256.FusedMultiplyAdd(vsq, Vector256.Load(dO + j), Vector256.Load(dS + j));
            var pr = Vector256.Load(prev + j);
            a4 = Vector256.FusedMultiplyAdd(pr, Vector256.Load(dO + j), a4);
            var sp = pr * vdec;
            var vdu = Vector256.Load(du + j);
            a1 = Vector256.FusedMultiplyAdd(d, Vector256.Load(u + j), a1);
            a2 = Vector256.FusedMultiplyAdd(sp, vdu, a2);
            var dsp = Vector256.FusedMultiplyAdd(-vbk, vdu, d);
            a3 = Vector256.FusedMultiplyAdd(sp, dsp, a3);
            (dsp * vdec).Store(dS + j);
        }
        float s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3), s4 = Vector256.Sum(a4);
        for (; j < n; j++)
        {
            float d = MathF.FusedMultiplyAdd(sq, dO[j], dS[j]);
            s4 = MathF.FusedMultiplyAdd(prev[j], dO[j], s4);
            float sp = prev[j] * decay;
            s1 = MathF.FusedMultiplyAdd(d, u[j], s1);
            s2 = MathF.FusedMultiplyAdd(sp, du[j], s2);
            float dsp = MathF.FusedMultiplyAdd(-bk, du[j], d);
            s3 = MathF.FusedMultiplyAdd(sp, dsp, s3);
            dS[j] = dsp * decay;
        }
        dSu = s1; spdu = s2; spdsp = s3; pdo = s4;
    }
}
