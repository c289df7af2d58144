// The Vector512 form of SmallMatrix.Gemm (backends running 512-bit vectors, VectorWidth.cs): 8-row blocks of C in 32- and 16-column
// strips (16 and 8 zmm accumulators), the rest of C through the Vector256 form. Every element of C is the
// same fused multiply-add chain over p in the same order as in the Vector256 and scalar forms, then ×α and
// (+C), so all forms give identical bits and the choice of width never changes a result.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace TaylorCalibrate.Backend.Cpu;

internal static unsafe partial class SmallMatrix
{
    /// <summary><see cref="Gemm"/> in Vector512 (taken when its caller runs 512-bit vectors; tests call it directly).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void GemmWide(int M, int N, int Kd, float* A, int rsA, int csA, float* B, int ldb,
                                float* C, int ldc, float alpha, bool accumulate)
    {
        int m8 = M / 8 * 8, n16 = N / 16 * 16;
        for (int i0 = 0; i0 < m8; i0 += 8) Rows8(i0, n16, Kd, A, rsA, csA, B, ldb, C, ldc, alpha, accumulate);
        if (n16 < N) GemmNarrow(m8, N - n16, Kd, A, rsA, csA, B + n16, ldb, C + n16, ldc, alpha, accumulate);
        if (m8 < M) GemmNarrow(M - m8, N, Kd, A + (long)m8 * rsA, rsA, csA, B, ldb, C + (long)m8 * ldc, ldc, alpha, accumulate);
    }

    // 8 rows of C, columns 0 .. N−1 (N a multiple of 16): strips of 32, then one of 16.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Rows8(int i0, int N, int Kd, float* A, int rsA, int csA, float* B, int ldb,
                      float* C, int ldc, float alpha, bool accumulate)
    {
        float* a0 = A + (long)i0 * rsA, a1 = a0 + rsA, a2 = a1 + rsA, a3 = a2 + rsA;
        float* a4 = a3 + rsA, a5 = a4 + rsA, a6 = a5 + rsA, a7 = a6 + rsA;
        float* c0 = C + (long)i0 * ldc, c1 = c0 + ldc, c2 = c1 + ldc, c3 = c2 + ldc;
        float* c4 = c3 + ldc, c5 = c4 + ldc, c6 = c5 + ldc, c7 = c6 + ldc;
        var va = Vector512.Create(alpha);
        int j = 0;
        for (; j + 32 <= N; j += 32)
        {
            Vector512<float> x00 = default, x01 = default, x10 = default, x11 = default, x20 = default, x21 = default, x30 = default, x31 = default;
            Vector512<float> x40 = default, x41 = default, x50 = default, x51 = default, x60 = default, x61 = default, x70 = default, x71 = default;
            float* b = B + j;
            long pa = 0;
            for (int p = 0; p < Kd; p++, b += ldb, pa += csA)
            {
                var b0 = Vector512.Load(b);
                var b1 = Vector512.Load(b + 16);
                var s = Vector512.Create(a0[pa]);
                x00 = Vector512.FusedMultiplyAdd(s, b0, x00); x01 = Vector512.FusedMultiplyAdd(s, b1, x01);
                s = Vector512.Create(a1[pa]);
                x10 = Vector512.FusedMultiplyAdd(s, b0, x10); x11 = Vector512.FusedMultiplyAdd(s, b1, x11);
                s = Vector512.Create(a2[pa]);
                x20 = Vector512.FusedMultiplyAdd(s, b0, x20); x21 = Vector512.FusedMultiplyAdd(s, b1, x21);
                s = Vector512.Create(a3[pa]);
                x30 = Vector512.FusedMultiplyAdd(s, b0, x30); x31 = Vector512.FusedMultiplyAdd(s, b1, x31);
                s = Vector512.Create(a4[pa]);
                x40 = Vector512.FusedMultiplyAdd(s, b0, x40); x41 = Vector512.FusedMultiplyAdd(s, b1, x41);
                s = Vector512.Create(a5[pa]);
                x50 = Vector512.FusedMultiplyAdd(s, b0, x50); x51 = Vector512.FusedMultiplyAdd(s, b1, x51);
                s = Vector512.Create(a6[pa]);
                x60 = Vector512.FusedMultiplyAdd(s, b0, x60); x61 = Vector512.FusedMultiplyAdd(s, b1, x61);
                s = Vector512.Create(a7[pa]);
                x70 = Vector512.FusedMultiplyAdd(s, b0, x70); x71 = Vector512.FusedMultiplyAdd(s, b1, x71);
            }
            Store(c0 + j, x00, va, accumulate); Store(c0 + j + 16, x01, va, accumulate);
            Store(c1 + j, x10, va, accumulate); Store(c1 + j + 16, x11, va, accumulate);
            Store(c2 + j, x20, va, accumulate); Store(c2 + j + 16, x21, va, accumulate);
            Store(c3 + j, x30, va, accumulate); Store(c3 + j + 16, x31, va, accumulate);
            Store(c4 + j, x40, va, accumulate); Store(c4 + j + 16, x41, va, accumulate);
            Store(c5 + j, x50, va, accumulate); Store(c5 + j + 16, x51, va, accumulate);
            Store(c6 + j, x60, va, accumulate); Store(c6 + j + 16, x61, va, accumulate);
            Store(c7 + j, x70, va, accumulate); Store(c7 + j + 16, x71, va, accumulate);
        }
        for (; j + 16 <= N; j += 16)
        {
            Vector512<float> x00 = default, x10 = default, x20 = default, x30 = default, x40 = default, x50 = default, x60 = default, x70 = default;
            float* b = B + j;
            long pa = 0;
            for (int p = 0; p < Kd; p++, b += ldb, pa += csA)
            {
                var b0 = Vector512.Load(b);
                var s = Vector512.Create(a0[pa]);
                x00 = Vector512.FusedMultiplyAdd(s, b0, x00);
                s = Vector512.Create(a1[pa]);
                x10 = Vector512.FusedMultiplyAdd(s, b0, x10);
                s = Vector512.Create(a2[pa]);
                x20 = Vector512.FusedMultiplyAdd(s, b0, x20);
                s = Vector512.Create(a3[pa]);
                x30 = Vector512.FusedMultiplyAdd(s, b0, x30);
                s = Vector512.Create(a4[pa]);
                x40 = Vector512.FusedMultiplyAdd(s, b0, x40);
                s = Vector512.Create(a5[pa]);
                x50 = Vector512.FusedMultiplyAdd(s, b0, x50);
                s = Vector512.Create(a6[pa]);
                x60 = Vector512.FusedMultiplyAdd(s, b0, x60);
                s = Vector512.Create(a7[pa]);
                x70 = Vector512.FusedMultiplyAdd(s, b0, x70);
            }
            Store(c0 + j, x00, va, accumulate);
            Store(c1 + j, x10, va, accumulate);
            Store(c2 + j, x20, va, accumulate);
            Store(c3 + j, x30, va, accumulate);
            Store(c4 + j, x40, va, accumulate);
            Store(c5 + j, x50, va, accumulate);
            Store(c6 + j, x60, va, accumulate);
            Store(c7 + j, x70, va, accumulate);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    static void Store(float* c, Vector512<float> x, Vector512<float> alpha, bool accumulate)
    {
        var r = x * alpha;
        if (accumulate) r += Vector512.Load(c);
        r.Store(c);
    }
}
