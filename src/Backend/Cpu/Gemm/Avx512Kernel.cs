// The AVX-512F GEMM micro-kernel: one 12×32 tile of C per call from packed panels (GemmPacking.cs),
//   C[r, j] = α·Σ_k a[k·12 + r]·b[k·32 + j] + β·C[r, j]     r < 12, j < 32, k < kc
// with the same meaning as the 6×16 kernels (MicroKernels.cs, docs/kernels.md §1).
// Why 12×32: AVX-512 has 32 zmm registers. 12 rows × 2 vectors = 24 accumulators, plus 2 B vectors and a
// broadcast, leaves room for the JIT. Each k step does 2 B loads, 12 A broadcasts and 24 FMAs; a core with
// two 512-bit FMA pipes (Zen 5) needs 12 cycles for the FMAs, and the loads fit in the same cycles.
// The 24 FMAs of a step are independent and each accumulator is reused only every 12 cycles, more than
// the FMA latency (4), so the pipes never wait on a result.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TaylorCalibrate.Backend.Cpu.Gemm;

/// <summary>The 12×32 Vector512 micro-kernel and its block sizes.</summary>
internal static unsafe class Avx512Kernel
{
    /// <summary>Rows of the tile.</summary>
    public const int MR = 12;
    /// <summary>Columns of the tile (two 16-float vectors).</summary>
    public const int NR = 32;
    /// <summary>Reduction block. A packed B micro-panel is KC×32 floats = 64 KiB: more than a 48 KiB L1, but the
    /// kernel needs only 176 bytes of A and B per 12 cycles, a small part of what L2 delivers, while each
    /// C tile is read and written K/KC times. Measured single-threaded on Zen 5 (GFLOP per CPU-second, best
    /// of 3, 1024³ and 512×2048×2048 x·Wᵀ): KC 256: 145/146, 512: 163/166, 1024: 168/162.</summary>
    public const int KC = 512;
    /// <summary>Rows of a packed A block: MC×KC floats = 576 KiB of a 1 MiB L2.</summary>
    public const int MC = 288;

    /// <summary>C tile = α·Σ a·b + β·C (β = 0: C not read). The accumulators are named locals so the JIT
    /// keeps all 24 in registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Tile12x32(int kc, float* a, float* b, float* c, long ldc, float alpha, float beta)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector512<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector512<float> c60 = default, c61 = default, c70 = default, c71 = default, c80 = default, c81 = default;
        Vector512<float> c90 = default, c91 = default, c100 = default, c101 = default, c110 = default, c111 = default;
        // Start fetching the C tile (12 rows × 2 cache lines) now, so the read-modify-write at the end finds
        // it in L1 instead of waiting on L2/L3 after the last FMA.
        for (int r = 0; r < MR; r++)
        {
            Sse.Prefetch0(c + r * ldc);
            Sse.Prefetch0(c + r * ldc + 16);
        }
        for (int k = 0; k < kc; k++, a += MR, b += NR)
        {
            var b0 = Avx512F.LoadVector512(b);
            var b1 = Avx512F.LoadVector512(b + 16);
            var x = Vector512.Create(a[0]);
            c00 = Avx512F.FusedMultiplyAdd(x, b0, c00); c01 = Avx512F.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a[1]);
            c10 = Avx512F.FusedMultiplyAdd(x, b0, c10); c11 = Avx512F.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a[2]);
            c20 = Avx512F.FusedMultiplyAdd(x, b0, c20); c21 = Avx512F.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a[3]);
            c30 = Avx512F.FusedMultiplyAdd(x, b0, c30); c31 = Avx512F.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a[4]);
            c40 = Avx512F.FusedMultiplyAdd(x, b0, c40); c41 = Avx512F.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a[5]);
            c50 = Avx512F.FusedMultiplyAdd(x, b0, c50); c51 = Avx512F.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(a[6]);
            c60 = Avx512F.FusedMultiplyAdd(x, b0, c60); c61 = Avx512F.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(a[7]);
            c70 = Avx512F.FusedMultiplyAdd(x, b0, c70); c71 = Avx512F.FusedMultiplyAdd(x, b1, c71);
            x = Vector512.Create(a[8]);
            c80 = Avx512F.FusedMultiplyAdd(x, b0, c80); c81 = Avx512F.FusedMultiplyAdd(x, b1, c81);
            x = Vector512.Create(a[9]);
            c90 = Avx512F.FusedMultiplyAdd(x, b0, c90); c91 = Avx512F.FusedMultiplyAdd(x, b1, c91);
            x = Vector512.Create(a[10]);
            c100 = Avx512F.FusedMultiplyAdd(x, b0, c100); c101 = Avx512F.FusedMultiplyAdd(x, b1, c101);
            x = Vector512.Create(a[11]);
            c110 = Avx512F.FusedMultiplyAdd(x, b0, c110); c111 = Avx512F.FusedMultiplyAdd(x, b1, c111);
        }
        var va = Vector512.Create(alpha);
        var vb = Vector512.Create(beta);
        bool readC = beta != 0;
        StoreRow(c, va, vb, readC, c00, c01);
        StoreRow(c + ldc, va, vb, readC, c10, c11);
        StoreRow(c + 2 * ldc, va, vb, readC, c20, c21);
        StoreRow(c + 3 * ldc, va, vb, readC, c30, c31);
        StoreRow(c + 4 * ldc, va, vb, readC, c40, c41);
        StoreRow(c + 5 * ldc, va, vb, readC, c50, c51);
        StoreRow(c + 6 * ldc, va, vb, readC, c60, c61);
        StoreRow(c + 7 * ldc, va, vb, readC, c70, c71);
        StoreRow(c + 8 * ldc, va, vb, readC, c80, c81);
        StoreRow(c + 9 * ldc, va, vb, readC, c90, c91);
        StoreRow(c + 10 * ldc, va, vb, readC, c100, c101);
        StoreRow(c + 11 * ldc, va, vb, readC, c110, c111);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreRow(float* p, Vector512<float> alpha, Vector512<float> beta, bool readC, Vector512<float> lo, Vector512<float> hi)
    {
        if (readC)
        {
            lo = Avx512F.FusedMultiplyAdd(beta, Avx512F.LoadVector512(p), Avx512F.Multiply(alpha, lo));
            hi = Avx512F.FusedMultiplyAdd(beta, Avx512F.LoadVector512(p + 16), Avx512F.Multiply(alpha, hi));
        }
        else
        {
            lo = Avx512F.Multiply(alpha, lo);
            hi = Avx512F.Multiply(alpha, hi);
        }
        Avx512F.Store(p, lo);
        Avx512F.Store(p + 16, hi);
    }
}
