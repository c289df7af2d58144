// Fixed-order SIMD reductions over a span (sum, dot, max, max |x|) in fp32. Unlike TensorPrimitives.Sum,
// whose vector loop may start at an alignment boundary (and so add in an order that depends on where the
// GC placed the array), these always add lane by lane from index 0: the same input gives the same bits.
// The scalar tail loops are the specification of each function.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace TaylorCalibrate.Backend.Cpu;

/// <summary>Deterministic fp32 reductions with Vector256 bodies and scalar tails.</summary>
internal static class Simd
{
    /// <summary>Σ x[i].</summary>
    public static float Sum(ReadOnlySpan<float> x)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        int n = x.Length, i = 0;
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;      // two chains hide the add latency
        for (; i <= n - 16; i += 16)
        {
            acc0 += Vector256.LoadUnsafe(ref px, (nuint)i);
            acc1 += Vector256.LoadUnsafe(ref px, (nuint)(i + 8));
        }
        float s = Vector256.Sum(acc0 + acc1);
        for (; i < n; i++) s += x[i];
        return s;
    }

    /// <summary>Σ x[i]·y[i] (spans of equal length).</summary>
    public static float Dot(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float py = ref MemoryMarshal.GetReference(y);
        int n = x.Length, i = 0;
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        for (; i <= n - 16; i += 16)
        {
            acc0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)i), Vector256.LoadUnsafe(ref py, (nuint)i), acc0);
            acc1 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)(i + 8)), Vector256.LoadUnsafe(ref py, (nuint)(i + 8)), acc1);
        }
        float s = Vector256.Sum(acc0 + acc1);
        for (; i < n; i++) s += x[i] * y[i];
        return s;
    }

    /// <summary>Σ x[i]².</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SumOfSquares(ReadOnlySpan<float> x) => Dot(x, x);

    /// <summary>max x[i]; −∞ for an empty span. NaN handling follows Vector256.Max (not specified).</summary>
    public static float Max(ReadOnlySpan<float> x)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        int n = x.Length, i = 0;
        float m = float.NegativeInfinity;
        if (n >= 8)
        {
            var acc = Vector256.Create(float.NegativeInfinity);
            for (; i <= n - 8; i += 8) acc = Vector256.Max(acc, Vector256.LoadUnsafe(ref px, (nuint)i));
            for (int l = 0; l < 8; l++) m = MathF.Max(m, acc[l]);
        }
        for (; i < n; i++) m = MathF.Max(m, x[i]);
        return m;
    }

    /// <summary>max |x[i]|; 0 for an empty span.</summary>
    public static float MaxAbs(ReadOnlySpan<float> x)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        int n = x.Length, i = 0;
        float m = 0;
        if (n >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.Max(acc, Vector256.Abs(Vector256.LoadUnsafe(ref px, (nuint)i)));
            for (int l = 0; l < 8; l++) m = MathF.Max(m, acc[l]);
        }
        for (; i < n; i++) m = MathF.Max(m, MathF.Abs(x[i]));
        return m;
    }
}
