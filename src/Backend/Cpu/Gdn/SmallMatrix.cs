// Small dense matrix kernels for the sequence mixers (intra-chunk products of the chunked gated delta rule,
// docs/kernels.md §3.2–3.3, and the tile products of flash attention, §2). Operands are at most a few hundred
// rows and columns and live in L1/L2, so a register-blocked 4×16 micro-kernel over Vector256 is enough
// (8×32 over Vector512 when the backend runs 512-bit vectors, SmallMatrix.Wide.cs);
// the big-matrix GEMM of the backend (Cpu/Gemm) is not used here because these tiles are strided
// views into per-head buffers and are far too small to amortise packing.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace TaylorCalibrate.Backend.Cpu;

/// <summary>Register-blocked fp32 products of small strided matrices (fp32 products and sums).</summary>
internal static unsafe partial class SmallMatrix
{
    /// <summary>
    /// C = α·A·B (+ C when <paramref name="accumulate"/>), fp32 accumulation; the Vector512 form when
    /// <paramref name="wide"/> (the backend's vector width, VectorWidth.cs), else the Vector256 one (identical bits).
    /// A [M,Kd] is addressed a(i,p) = A[i·rsA + p·csA] (so Aᵀ of a row-major matrix is rsA = 1, csA = ld);
    /// B [Kd,N] is row-major with row stride <paramref name="ldb"/>; C [M,N] has row stride <paramref name="ldc"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Gemm(bool wide, int M, int N, int Kd, float* A, int rsA, int csA, float* B, int ldb,
                            float* C, int ldc, float alpha = 1f, bool accumulate = false)
    {
        if (M <= 0 || N <= 0) return;
        if (Kd <= 0)
        {
            if (!accumulate) for (int i = 0; i < M; i++) new Span<float>(C + (long)i * ldc, N).Clear();
            return;
        }
        if (wide) GemmWide(M, N, Kd, A, rsA, csA, B, ldb, C, ldc, alpha, accumulate);
        else GemmNarrow(M, N, Kd, A, rsA, csA, B, ldb, C, ldc, alpha, accumulate);
    }

    /// <summary><see cref="Gemm"/> in Vector256 (M, N ≥ 1, Kd ≥ 1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void GemmNarrow(int M, int N, int Kd, float* A, int rsA, int csA, float* B, int ldb,
                                  float* C, int ldc, float alpha, bool accumulate)
    {
        int i0 = 0;
        for (; i0 + 4 <= M; i0 += 4) Rows4(i0, N, Kd, A, rsA, csA, B, ldb, C, ldc, alpha, accumulate);
        for (; i0 < M; i0++) Rows1(i0, N, Kd, A, rsA, csA, B, ldb, C, ldc, alpha, accumulate);
    }

    /// <summary>The specification of <see cref="Gemm"/>: plain loops, the same fused multiply-add chain per
    /// element (tests compare the vector forms with it bit for bit).</summary>
    public static void GemmScalar(int M, int N, int Kd, float* A, int rsA, int csA, float* B, int ldb,
                                  float* C, int ldc, float alpha, bool accumulate)
    {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
            {
                float s = 0;
                for (int p = 0; p < Kd; p++) s = MathF.FusedMultiplyAdd(A[(long)i * rsA + (long)p * csA], B[(long)p * ldb + j], s);
                C[(long)i * ldc + j] = alpha * s + (accumulate ? C[(long)i * ldc + j] : 0f);
            }
    }

    // 4 rows of C: columns in blocks of 16 (two vectors, 8 accumulators), then 8, then a scalar tail.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Rows4(int i0, int N, int Kd, float* A, int rsA, int csA, float* B, int ldb,
                      float* C, int ldc, float alpha, bool accumulate)
    {
        float* a0 = A + (long)i0 * rsA, a1 = a0 + rsA, a2 = a1 + rsA, a3 = a2 + rsA;
        float* c0 = C + (long)i0 * ldc, c1 = c0 + ldc, c2 = c1 + ldc, c3 = c2 + ldc;
        var va = Vector256.Create(alpha);
        int j = 0;
        for (; j + 16 <= N; j += 16)
        {
            Vector256<float> x00 = default, x01 = default, x10 = default, x11 = default,
                             x20 = default, x21 = default, x30 = default, x31 = default;
            float* b = B + j;
            long pa = 0;
            for (int p = 0; p < Kd; p++, b += ldb, pa += csA)
            {
                var b0 = Vector256.Load(b);
                var b1 = Vector256.Load(b + 8);
                var s = Vector256.Create(a0[pa]);
                x00 = Vector256.FusedMultiplyAdd(s, b0, x00); x01 = Vector256.FusedMultiplyAdd(s, b1, x01);
                s = Vector256.Create(a1[pa]);
                x10 = Vector256.FusedMultiplyAdd(s, b0, x10); x11 = Vector256.FusedMultiplyAdd(s, b1, x11);
                s = Vector256.Create(a2[pa]);
                x20 = Vector256.FusedMultiplyAdd(s, b0, x20); x21 = Vector256.FusedMultiplyAdd(s, b1, x21);
                s = Vector256.Create(a3[pa]);
                x30 = Vector256.FusedMultiplyAdd(s, b0, x30); x31 = Vector256.FusedMultiplyAdd(s, b1, x31);
            }
            Store(c0 + j, x00, va, accumulate); Store(c0 + j + 8, x01, va, accumulate);
            Store(c1 + j, x10, va, accumulate); Store(c1 + j + 8, x11, va, accumulate);
            Store(c2 + j, x20, va, accumulate); Store(c2 + j + 8, x21, va, accumulate);
            Store(c3 + j, x30, va, accumulate); Store(c3 + j + 8, x31, va, accumulate);
        }
        for (; j + 8 <= N; j += 8)
        {
            Vector256<float> x0 = default, x1 = default, x2 = default, x3 = default;
            float* b = B + j;
            long pa = 0;
            for (int p = 0; p < Kd; p++, b += ldb, pa += csA)
            {
                var b0 = Vector256.Load(b);
                x0 = Vector256.FusedMultiplyAdd(Vector256.Create(a0[pa]), b0, x0);
                x1 = Vector256.FusedMultiplyAdd(Vector256.Create(a1[pa]), b0, x1);
                x2 = Vector256.FusedMultiplyAdd(Vector256.Create(a2[pa]), b0, x2);
                x3 = Vector256.FusedMultiplyAdd(Vector256.Create(a3[pa]), b0, x3);
            }
            Store(c0 + j, x0, va, accumulate); Store(c1 + j, x1, va, accumulate);
            Store(c2 + j, x2, va, accumulate); Store(c3 + j, x3, va, accumulate);
        }
        for (; j < N; j++)
        {
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            float* b = B + j;
            long pa = 0;
            for (int p = 0; p < Kd; p++, b += ldb, pa += csA)
            {
                float bv = *b;
                s0 = MathF.FusedMultiplyAdd(a0[pa], bv, s0); s1 = MathF.FusedMultiplyAdd(a1[pa], bv, s1);
                s2 = MathF.FusedMultiplyAdd(a2[pa], bv, s2); s3 = MathF.FusedMultiplyAdd(a3[pa], bv, s3);
            }
            c0[j] = alpha * s0 + (accumulate ? c0[j] : 0f); c1[j] = alpha * s1 + (accumulate ? c1[j] : 0f);
            c2[j] = alpha * s2 + (accumulate ? c2[j] : 0f); c3[j] = alpha * s3 + (accumulate ? c3[j] : 0f);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Rows1(int i0, int N, int Kd, float* A, int rsA, int csA, float* B, int ldb,
                      float* C, int ldc, float alpha, bool accumulate)
    {
        float* a0 = A + (long)i0 * rsA;
        float* c0 = C + (long)i0 * ldc;
        var va = Vector256.Create(alpha);
        int j = 0;
        for (; j + 16 <= N; j += 16)
        {
            Vector256<float> x0 = default, x1 = default;
            float* b = B + j;
            long pa = 0;
            for (int p = 0; p < Kd; p++, b += ldb, pa += csA)
            {
                var s = Vector256.Create(a0[pa]);
                x0 = Vector256.FusedMultiplyAdd(s, Vector256.Load(b), x0);
                x1 = Vector256.FusedMultiplyAdd(s, Vector256.Load(b + 8), x1);
            }
            Store(c0 + j, x0, va, accumulate); Store(c0 + j + 8, x1, va, accumulate);
        }
        for (; j + 8 <= N; j += 8)
        {
            Vector256<float> x0 = default;
            float* b = B + j;
            long pa = 0;
            for (int p = 0; p < Kd; p++, b += ldb, pa += csA)
                x0 = Vector256.FusedMultiplyAdd(Vector256.Create(a0[pa]), Vector256.Load(b), x0);
            Store(c0 + j, x0, va, accumulate);
        }
        for (; j < N; j++)
        {
            float s0 = 0;
            float* b = B + j;
            long pa = 0;
            for (int p = 0; p < Kd; p++, b += ldb, pa += csA) s0 = MathF.FusedMultiplyAdd(a0[pa], *b, s0);
            c0[j] = alpha * s0 + (accumulate ? c0[j] : 0f);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    static void Store(float* c, Vector256<float> x, Vector256<float> alpha, bool accumulate)
    {
        var r = x * alpha;
        if (accumulate) r += Vector256.Load(c);
        r.Store(c);
    }

    /// <summary>dst [cols, rows] (row stride ldd) = srcᵀ, src [rows, cols] with row stride lds.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Transpose(float* src, int rows, int cols, int lds, float* dst, int ldd)
    {
        // 8 source rows at a time: each destination row receives 8 consecutive floats per visit (one cache
        // line touched, not eight), and the 8 source lines stay in L1 across consecutive c.
        int r0 = 0;
        for (; r0 + 8 <= rows; r0 += 8)
        {
            float* s0 = src + (long)r0 * lds;
            for (int c = 0; c < cols; c++)
            {
                float* d = dst + (long)c * ldd + r0;
                float* s = s0 + c;
                d[0] = s[0]; d[1] = s[lds]; d[2] = s[2L * lds]; d[3] = s[3L * lds];
                d[4] = s[4L * lds]; d[5] = s[5L * lds]; d[6] = s[6L * lds]; d[7] = s[7L * lds];
            }
        }
        for (int r = r0; r < rows; r++)
        {
            float* s = src + (long)r * lds;
            for (int c = 0; c < cols; c++) dst[(long)c * ldd + r] = s[c];
        }
    }

    /// <summary>Σ x_i·y_i over n contiguous floats, fp32 accumulation.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static float Dot(float* x, float* y, int n)
    {
        int i = 0;
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        for (; i + 16 <= n; i += 16)
        {
            acc0 = Vector256.FusedMultiplyAdd(Vector256.Load(x + i), Vector256.Load(y + i), acc0);
            acc1 = Vector256.FusedMultiplyAdd(Vector256.Load(x + i + 8), Vector256.Load(y + i + 8), acc1);
        }
        for (; i + 8 <= n; i += 8) acc0 = Vector256.FusedMultiplyAdd(Vector256.Load(x + i), Vector256.Load(y + i), acc0);
        float s = Vector256.Sum(acc0 + acc1);
        for (; i < n; i++) s = MathF.FusedMultiplyAdd(x[i], y[i], s);
        return s;
    }

    /// <summary>y += a·x over n contiguous floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Axpy(float a, float* x, float* y, int n)
    {
        int i = 0;
        var va = Vector256.Create(a);
        for (; i + 8 <= n; i += 8) Vector256.FusedMultiplyAdd(va, Vector256.Load(x + i), Vector256.Load(y + i)).Store(y + i);
        for (; i < n; i++) y[i] = MathF.FusedMultiplyAdd(a, x[i], y[i]);
    }

    /// <summary>x *= a over n contiguous floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static void ScaleInPlace(float a, float* x, int n)
    {
        int i = 0;
        var va = Vector256.Create(a);
        for (; i + 8 <= n; i += 8) (Vector256.Load(x + i) * va).Store(x + i);
        for (; i < n; i++) x[i] *= a;
    }
}
