// Fixed-order SIMD reductions over a span (sum, dot, max, max |x|) in fp32, and the shifted exponential with its
// sum that softmax and the streamed log-sum-exp share. Unlike TensorPrimitives.Sum, whose vector loop may start
// at an alignment boundary (and so add in an order that depends on where the GC placed the array), these always
// add lane by lane from index 0: the same input gives the same bits. Each comes in a Vector256 and a Vector512
// form (wide: two 16-lane chains instead of two 8-lane ones, chosen by the backend's vector width,
// VectorWidth.cs); the two differ by rounding in the sums only (max is exact in both). The scalar tail loops,
// run over a whole span, are the specification of each function. Exp and Sigmoid stand in for TensorPrimitives'
// so that the backend's vector width, not the runtime's, decides their form (and A/B benchmarks can compare).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace TaylorCalibrate.Backend.Cpu;

/// <summary>Deterministic fp32 reductions with Vector256 or Vector512 bodies and scalar tails.</summary>
internal static class Simd
{
    /// <summary>Σ x[i].</summary>
    public static float Sum(ReadOnlySpan<float> x, bool wide)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        int n = x.Length, i = 0;
        float s = 0;
        if (wide)
        {
            var w0 = Vector512<float>.Zero;
            var w1 = Vector512<float>.Zero;
            for (; i <= n - 32; i += 32)
            {
                w0 += Vector512.LoadUnsafe(ref px, (nuint)i);
                w1 += Vector512.LoadUnsafe(ref px, (nuint)(i + 16));
            }
            s = Vector512.Sum(w0 + w1);
        }
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;      // two chains hide the add latency
        for (; i <= n - 16; i += 16)
        {
            acc0 += Vector256.LoadUnsafe(ref px, (nuint)i);
            acc1 += Vector256.LoadUnsafe(ref px, (nuint)(i + 8));
        }
        s += Vector256.Sum(acc0 + acc1);
        for (; i < n; i++) s += x[i];
        return s;
    }

    /// <summary>Σ x[i]·y[i] (spans of equal length).</summary>
    public static float Dot(ReadOnlySpan<float> x, ReadOnlySpan<float> y, bool wide)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float py = ref MemoryMarshal.GetReference(y);
        int n = x.Length, i = 0;
        float s = 0;
        if (wide)
        {
            var w0 = Vector512<float>.Zero;
            var w1 = Vector512<float>.Zero;
            for (; i <= n - 32; i += 32)
            {
                w0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref px, (nuint)i), Vector512.LoadUnsafe(ref py, (nuint)i), w0);
                w1 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref px, (nuint)(i + 16)), Vector512.LoadUnsafe(ref py, (nuint)(i + 16)), w1);
            }
            s = Vector512.Sum(w0 + w1);
        }
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        for (; i <= n - 16; i += 16)
        {
            acc0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)i), Vector256.LoadUnsafe(ref py, (nuint)i), acc0);
            acc1 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)(i + 8)), Vector256.LoadUnsafe(ref py, (nuint)(i + 8)), acc1);
        }
        s += Vector256.Sum(acc0 + acc1);
        for (; i < n; i++) s += x[i] * y[i];
        return s;
    }

    /// <summary>Σ x[i]².</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float SumOfSquares(ReadOnlySpan<float> x, bool wide) => Dot(x, x, wide);

    /// <summary>max x[i]; −∞ for an empty span. NaN handling follows Vector256.Max (not specified).</summary>
    public static float Max(ReadOnlySpan<float> x, bool wide)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        int n = x.Length, i = 0;
        float m = float.NegativeInfinity;
        if (wide && n >= 16)
        {
            var acc = Vector512.Create(float.NegativeInfinity);
            for (; i <= n - 16; i += 16) acc = Vector512.Max(acc, Vector512.LoadUnsafe(ref px, (nuint)i));
            var half = Vector256.Max(acc.GetLower(), acc.GetUpper());
            for (int l = 0; l < 8; l++) m = MathF.Max(m, half[l]);
        }
        if (n - i >= 8)
        {
            var acc = Vector256.Create(float.NegativeInfinity);
            for (; i <= n - 8; i += 8) acc = Vector256.Max(acc, Vector256.LoadUnsafe(ref px, (nuint)i));
            for (int l = 0; l < 8; l++) m = MathF.Max(m, acc[l]);
        }
        for (; i < n; i++) m = MathF.Max(m, x[i]);
        return m;
    }

    /// <summary>max |x[i]|; 0 for an empty span.</summary>
    public static float MaxAbs(ReadOnlySpan<float> x, bool wide)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        int n = x.Length, i = 0;
        float m = 0;
        if (wide && n >= 16)
        {
            var acc = Vector512<float>.Zero;
            for (; i <= n - 16; i += 16) acc = Vector512.Max(acc, Vector512.Abs(Vector512.LoadUnsafe(ref px, (nuint)i)));
            var half = Vector256.Max(acc.GetLower(), acc.GetUpper());
            for (int l = 0; l < 8; l++) m = MathF.Max(m, half[l]);
        }
        if (n - i >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i <= n - 8; i += 8) acc = Vector256.Max(acc, Vector256.Abs(Vector256.LoadUnsafe(ref px, (nuint)i)));
            for (int l = 0; l < 8; l++) m = MathF.Max(m, acc[l]);
        }
        for (; i < n; i++) m = MathF.Max(m, MathF.Abs(x[i]));
        return m;
    }

    /// <summary>dst[i] = e^{x[i] − m}; returns Σ dst[i] (dst may be x). One pass where softmax and the
    /// log-sum-exp used to make three (subtract, exp, sum).</summary>
    public static float ExpShiftedSum(ReadOnlySpan<float> x, float m, Span<float> dst, bool wide)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float pd = ref MemoryMarshal.GetReference(dst);
        int n = x.Length, i = 0;
        float s = 0;
        if (wide)
        {
            var wm = Vector512.Create(m);
            var w0 = Vector512<float>.Zero;
            var w1 = Vector512<float>.Zero;
            for (; i <= n - 32; i += 32)
            {
                var e0 = Vector512.Exp(Vector512.LoadUnsafe(ref px, (nuint)i) - wm);
                var e1 = Vector512.Exp(Vector512.LoadUnsafe(ref px, (nuint)(i + 16)) - wm);
                e0.StoreUnsafe(ref pd, (nuint)i);
                e1.StoreUnsafe(ref pd, (nuint)(i + 16));
                w0 += e0;
                w1 += e1;
            }
            s = Vector512.Sum(w0 + w1);
        }
        var vm = Vector256.Create(m);
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        for (; i <= n - 16; i += 16)
        {
            var e0 = Vector256.Exp(Vector256.LoadUnsafe(ref px, (nuint)i) - vm);
            var e1 = Vector256.Exp(Vector256.LoadUnsafe(ref px, (nuint)(i + 8)) - vm);
            e0.StoreUnsafe(ref pd, (nuint)i);
            e1.StoreUnsafe(ref pd, (nuint)(i + 8));
            acc0 += e0;
            acc1 += e1;
        }
        s += Vector256.Sum(acc0 + acc1);
        for (; i < n; i++)
        {
            float e = MathF.Exp(x[i] - m);
            dst[i] = e;
            s += e;
        }
        return s;
    }

    /// <summary>dst[i] = s·e^{x[i] − m} (dst may be x): the cross-entropy gradient's softmax in one pass. The
    /// wide form takes 16 elements at a time, then the same 8-element and scalar steps, so both widths give
    /// the same bits.</summary>
    public static void ScaledExpShifted(ReadOnlySpan<float> x, float m, float s, Span<float> dst, bool wide)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float pd = ref MemoryMarshal.GetReference(dst);
        int n = x.Length, i = 0;
        if (wide)
        {
            var wm = Vector512.Create(m);
            var ws = Vector512.Create(s);
            for (; i <= n - 16; i += 16) (ws * Vector512.Exp(Vector512.LoadUnsafe(ref px, (nuint)i) - wm)).StoreUnsafe(ref pd, (nuint)i);
        }
        var vm = Vector256.Create(m);
        var vs = Vector256.Create(s);
        for (; i <= n - 8; i += 8) (vs * Vector256.Exp(Vector256.LoadUnsafe(ref px, (nuint)i) - vm)).StoreUnsafe(ref pd, (nuint)i);
        for (; i < n; i++) dst[i] = s * MathF.Exp(x[i] - m);
    }

    /// <summary>dst[i] = e^{x[i]} (dst may be x); 16-, 8-element and scalar steps, the same bits in both widths.</summary>
    public static void Exp(ReadOnlySpan<float> x, Span<float> dst, bool wide)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float pd = ref MemoryMarshal.GetReference(dst);
        int n = x.Length, i = 0;
        if (wide)
            for (; i <= n - 16; i += 16) Vector512.Exp(Vector512.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref pd, (nuint)i);
        for (; i <= n - 8; i += 8) Vector256.Exp(Vector256.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref pd, (nuint)i);
        for (; i < n; i++) dst[i] = MathF.Exp(x[i]);
    }

    /// <summary>dst[i] = σ(x[i]) = 1/(1 + e^{−x[i]}) (dst may be x; e^{−x} = ∞ gives 0); steps as in <see cref="Exp"/>.</summary>
    public static void Sigmoid(ReadOnlySpan<float> x, Span<float> dst, bool wide)
    {
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float pd = ref MemoryMarshal.GetReference(dst);
        int n = x.Length, i = 0;
        if (wide)
        {
            var one = Vector512<float>.One;
            for (; i <= n - 16; i += 16)
                (one / (one + Vector512.Exp(-Vector512.LoadUnsafe(ref px, (nuint)i)))).StoreUnsafe(ref pd, (nuint)i);
        }
        var one8 = Vector256<float>.One;
        for (; i <= n - 8; i += 8)
            (one8 / (one8 + Vector256.Exp(-Vector256.LoadUnsafe(ref px, (nuint)i)))).StoreUnsafe(ref pd, (nuint)i);
        for (; i < n; i++) dst[i] = 1f / (1f + MathF.Exp(-x[i]));
    }
}
