// GEMM micro-kernels: one MR×NR tile of C from packed panels (GemmPacking.cs).
//   C[r, j] = α·Σ_k a[k·MR + r]·b[k·NR + j] + β·C[r, j]     r < MR, j < NR, k < kc
// a: packed A micro-panel (kc, MR); b: packed B micro-panel (kc, NR); c: the tile, row stride ldc.
// β = 0 means C is not read (so NaN/garbage in C never leaks into the result, as in BLAS).
// Four variants, chosen at run time by what the processor offers (or forced by TC_CPU_GEMM): AVX-512F
// (a 12×32 tile in 24 zmm accumulators, Avx512Kernel.cs), AVX2+FMA (12 ymm accumulators, 2 B loads and one A
// broadcast per row and k), portable Vector<float>, and scalar (the specification of the others; 6×16 like
// the AVX2 and Vector ones).
// Maths: docs/kernels.md §1.
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TaylorCalibrate.Backend.Cpu.Gemm;

/// <summary>Which micro-kernel a GEMM uses.</summary>
internal enum GemmKernelKind
{
    /// <summary>Plain loops; the specification.</summary>
    Scalar,
    /// <summary>System.Numerics.Vector&lt;float&gt; (any SIMD width dividing 16).</summary>
    Vector,
    /// <summary>Vector256 with AVX2 and FMA (x86-64 since Haswell / Zen).</summary>
    Avx2Fma,
    /// <summary>Vector512 with AVX-512F: a 12×32 tile (Avx512Kernel.cs; Zen 4/5, Skylake-X and later).</summary>
    Avx512,
}

/// <summary>Tile and block sizes of one micro-kernel: an Mr×Nr tile of C per call; packed A blocks of
/// Mc×Kc floats (L2) and B micro-panels of Kc×Nr floats (L1).</summary>
internal readonly record struct KernelGeometry(int Mr, int Nr, int Kc, int Mc);

/// <summary>The 6×16 micro-kernels, the choice between every kernel and the tile store they share.</summary>
internal static unsafe class MicroKernels
{
    /// <summary>Rows of the 6×16 tile (6 rows × 2 vectors = 12 accumulators, leaving 4 of 16 ymm registers).</summary>
    public const int MR = 6;
    /// <summary>Columns of the 6×16 tile (two 8-float vectors).</summary>
    public const int NR = 16;
    /// <summary>The largest tile of any kernel (the scratch tile of edge stores).</summary>
    public const int MaxTile = Avx512Kernel.MR * Avx512Kernel.NR;

    /// <summary>Environment variable that forces a kernel: scalar, vector, avx2 or avx512.</summary>
    public const string ForceVariable = "TC_CPU_GEMM";

    /// <summary>The best kernel this machine runs.</summary>
    public static GemmKernelKind Best =>
        IsSupported(GemmKernelKind.Avx512) ? GemmKernelKind.Avx512
        : IsSupported(GemmKernelKind.Avx2Fma) ? GemmKernelKind.Avx2Fma
        : Vector.IsHardwareAccelerated && NR % Vector<float>.Count == 0 ? GemmKernelKind.Vector
        : GemmKernelKind.Scalar;

    /// <summary>Whether the kernel can run here (tests try every available one).</summary>
    public static bool IsSupported(GemmKernelKind kind) => kind switch
    {
        GemmKernelKind.Avx512 => Avx512F.IsSupported,
        GemmKernelKind.Avx2Fma => Avx2.IsSupported && Fma.IsSupported,
        GemmKernelKind.Vector => NR % Vector<float>.Count == 0,
        _ => true,
    };

    /// <summary>The name <see cref="ForceVariable"/> takes for a kernel.</summary>
    public static string Name(GemmKernelKind kind) => kind switch
    {
        GemmKernelKind.Avx512 => "avx512",
        GemmKernelKind.Avx2Fma => "avx2",
        GemmKernelKind.Vector => "vector",
        _ => "scalar",
    };

    /// <summary>What `devices` prints for a kernel.</summary>
    public static string Describe(GemmKernelKind kind)
    {
        var g = Geometry(kind);
        return kind switch
        {
            GemmKernelKind.Avx512 => $"AVX-512F GEMM kernel {g.Mr}x{g.Nr}",
            GemmKernelKind.Avx2Fma => $"AVX2+FMA GEMM kernel {g.Mr}x{g.Nr}",
            GemmKernelKind.Vector => $"Vector<float> ({Vector<float>.Count} lanes) GEMM kernel {g.Mr}x{g.Nr}",
            _ => $"scalar GEMM kernel {g.Mr}x{g.Nr}",
        };
    }

    /// <summary>The kernel to use: <see cref="ForceVariable"/> when set, else <see cref="Best"/>.</summary>
    /// <exception cref="ArgumentException">The variable names no kernel, or one this processor cannot run.</exception>
    public static GemmKernelKind FromEnvironment() => Parse(Environment.GetEnvironmentVariable(ForceVariable));

    /// <summary>The kernel a value of <see cref="ForceVariable"/> asks for (null, empty or "auto": <see cref="Best"/>).</summary>
    /// <exception cref="ArgumentException">The value names no kernel, or one this processor cannot run.</exception>
    public static GemmKernelKind Parse(string? value)
    {
        var v = value?.Trim().ToLowerInvariant();
        if (string.IsNullOrEmpty(v) || v == "auto") return Best;
        var all = Enum.GetValues<GemmKernelKind>();
        foreach (var kind in all)
            if (Name(kind) == v)
                return IsSupported(kind) ? kind
                    : throw new ArgumentException($"{ForceVariable}={v}: this processor cannot run the {v} GEMM kernel; it runs {string.Join(", ", all.Where(IsSupported).Select(Name))}");
        throw new ArgumentException($"{ForceVariable}={v}: expected auto, {string.Join(", ", all.Select(Name))}");
    }

    /// <summary>Tile and block sizes of a kernel (the 12×32 kernel's are explained in Avx512Kernel.cs).</summary>
    public static KernelGeometry Geometry(GemmKernelKind kind) => kind switch
    {
        GemmKernelKind.Avx512 => new(Avx512Kernel.MR, Avx512Kernel.NR, Avx512Kernel.KC, Avx512Kernel.MC),
        _ => new(MR, NR, 256, 96),
    };

    /// <summary>Function pointer to the kernel: (kc, a, b, c, ldc, α, β).</summary>
    public static delegate*<int, float*, float*, float*, long, float, float, void> Get(GemmKernelKind kind) => kind switch
    {
        GemmKernelKind.Avx512 => &Avx512Kernel.Tile12x32,
        GemmKernelKind.Avx2Fma => &Avx2Fma6x16,
        GemmKernelKind.Vector => &Vector6x16,
        _ => &Scalar6x16,
    };

    /// <summary>Scalar reference kernel.</summary>
    public static void Scalar6x16(int kc, float* a, float* b, float* c, long ldc, float alpha, float beta)
    {
        float* acc = stackalloc float[MR * NR];
        for (int i = 0; i < MR * NR; i++) acc[i] = 0;
        for (int k = 0; k < kc; k++, a += MR, b += NR)
            for (int r = 0; r < MR; r++)
            {
                float ar = a[r];
                for (int j = 0; j < NR; j++) acc[r * NR + j] += ar * b[j];
            }
        for (int r = 0; r < MR; r++)
            for (int j = 0; j < NR; j++)
            {
                float* p = c + r * ldc + j;
                *p = beta == 0 ? alpha * acc[r * NR + j] : alpha * acc[r * NR + j] + beta * *p;
            }
    }

    /// <summary>Portable SIMD kernel: Vector&lt;float&gt; of width W (4, 8 or 16), NR/W vectors per row.</summary>
    public static void Vector6x16(int kc, float* a, float* b, float* c, long ldc, float alpha, float beta)
    {
        int w = Vector<float>.Count, perRow = NR / w;
        var acc = stackalloc Vector<float>[MR * NR / 4];       // enough for the narrowest width, 4
        for (int i = 0; i < MR * perRow; i++) acc[i] = Vector<float>.Zero;
        for (int k = 0; k < kc; k++, a += MR, b += NR)
            for (int r = 0; r < MR; r++)
            {
                var ar = new Vector<float>(a[r]);
                for (int v = 0; v < perRow; v++)
                    acc[r * perRow + v] += ar * Unsafe.ReadUnaligned<Vector<float>>(b + v * w);
            }
        var va = new Vector<float>(alpha);
        var vb = new Vector<float>(beta);
        for (int r = 0; r < MR; r++)
            for (int v = 0; v < perRow; v++)
            {
                float* p = c + r * ldc + v * w;
                var y = va * acc[r * perRow + v];
                if (beta != 0) y += vb * Unsafe.ReadUnaligned<Vector<float>>(p);
                Unsafe.WriteUnaligned(p, y);
            }
    }

    /// <summary>AVX2+FMA kernel. The twelve accumulators are named locals so the JIT keeps them in
    /// registers; the k loop then does 2 loads, 6 broadcasts and 12 FMAs per step.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Avx2Fma6x16(int kc, float* a, float* b, float* c, long ldc, float alpha, float beta)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int k = 0; k < kc; k++, a += MR, b += NR)
        {
            var b0 = Avx.LoadVector256(b);
            var b1 = Avx.LoadVector256(b + 8);
            var x = Avx.BroadcastScalarToVector256(a);
            c00 = Fma.MultiplyAdd(x, b0, c00); c01 = Fma.MultiplyAdd(x, b1, c01);
            x = Avx.BroadcastScalarToVector256(a + 1);
            c10 = Fma.MultiplyAdd(x, b0, c10); c11 = Fma.MultiplyAdd(x, b1, c11);
            x = Avx.BroadcastScalarToVector256(a + 2);
            c20 = Fma.MultiplyAdd(x, b0, c20); c21 = Fma.MultiplyAdd(x, b1, c21);
            x = Avx.BroadcastScalarToVector256(a + 3);
            c30 = Fma.MultiplyAdd(x, b0, c30); c31 = Fma.MultiplyAdd(x, b1, c31);
            x = Avx.BroadcastScalarToVector256(a + 4);
            c40 = Fma.MultiplyAdd(x, b0, c40); c41 = Fma.MultiplyAdd(x, b1, c41);
            x = Avx.BroadcastScalarToVector256(a + 5);
            c50 = Fma.MultiplyAdd(x, b0, c50); c51 = Fma.MultiplyAdd(x, b1, c51);
        }
        var va = Vector256.Create(alpha);
        var vb = Vector256.Create(beta);
        bool readC = beta != 0;
        StoreRow(c, va, vb, readC, c00, c01);
        StoreRow(c + ldc, va, vb, readC, c10, c11);
        StoreRow(c + 2 * ldc, va, vb, readC, c20, c21);
        StoreRow(c + 3 * ldc, va, vb, readC, c30, c31);
        StoreRow(c + 4 * ldc, va, vb, readC, c40, c41);
        StoreRow(c + 5 * ldc, va, vb, readC, c50, c51);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreRow(float* p, Vector256<float> alpha, Vector256<float> beta, bool readC, Vector256<float> lo, Vector256<float> hi)
    {
        if (readC)
        {
            lo = Fma.MultiplyAdd(beta, Avx.LoadVector256(p), Avx.Multiply(alpha, lo));
            hi = Fma.MultiplyAdd(beta, Avx.LoadVector256(p + 8), Avx.Multiply(alpha, hi));
        }
        else
        {
            lo = Avx.Multiply(alpha, lo);
            hi = Avx.Multiply(alpha, hi);
        }
        Avx.Store(p, lo);
        Avx.Store(p + 8, hi);
    }

    /// <summary>Merges a full accumulator tile (row stride <paramref name="tileNr"/>, α and β already 1 and 0)
    /// into the valid mr×nr corner of C: the tail path for tiles at the right and bottom edges.</summary>
    public static void StorePartial(float* tile, int tileNr, float* c, long ldc, int mr, int nr, float alpha, float beta)
    {
        for (int r = 0; r < mr; r++)
            for (int j = 0; j < nr; j++)
            {
                float* p = c + r * ldc + j;
                *p = beta == 0 ? alpha * tile[r * tileNr + j] : alpha * tile[r * tileNr + j] + beta * *p;
            }
    }
}
