// Chooses between the two forms of the gated delta rule (docs/kernels.md §3.1 token recurrence, §3.2 chunked) by
// timing both on the device at hand: which is faster depends on the device (a GPU wants the chunked form's
// matrix products; a CPU core may prefer the recurrence's L1-resident state) and on T, K, V.
using System.Diagnostics;

namespace TaylorCalibrate.Backend;

/// <summary>Seconds per forward + backward call of each GDN form, from <see cref="GdnModeSelector.Measure"/>.</summary>
public sealed record GdnTiming(double ChunkedSeconds, double RecurrentSeconds, int B, int T, int H, int K, int V)
{
    /// <summary>The faster form.</summary>
    public GdnMode Faster => ChunkedSeconds <= RecurrentSeconds ? GdnMode.Chunked : GdnMode.Recurrent;
    /// <summary>Tokens (B·T) per second of forward + backward for a form.</summary>
    public double TokensPerSecond(GdnMode mode) => B * (double)T / (mode == GdnMode.Chunked ? ChunkedSeconds : RecurrentSeconds);
}

/// <summary>Picks the faster gated-delta-rule form for a backend and shape by measurement.</summary>
public static class GdnModeSelector
{
    /// <summary>
    /// Times GdnForward + GdnBackward in both modes on random inputs of shape [B,T,H,K] / [B,T,H,V]
    /// (one warm-up call each, then the median of <paramref name="repeats"/>). Allocates and frees its tensors.
    /// A form the backend refuses with NotSupportedException (not implemented, or beyond a device limit) gets
    /// +∞ seconds, so the other one is chosen.
    /// </summary>
    /// <exception cref="ArgumentException">A size is not positive, or the backend rejects the shape.</exception>
    /// <exception cref="NotSupportedException">The backend supports neither form for this shape.</exception>
    public static GdnTiming Measure(IBackend backend, int B = 1, int T = 2048, int H = 8, int K = 64, int V = 64,
                                    int repeats = 3, int chunkSize = 64)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (B < 1 || T < 1 || H < 1 || K < 1 || V < 1 || repeats < 1)
            throw new ArgumentException($"GdnModeSelector.Measure: sizes B={B} T={T} H={H} K={K} V={V} repeats={repeats} must be ≥ 1");
        var rng = new Random(1234);
        float[] Rand(long n, float lo, float hi)
        {
            var a = new float[n];
            for (long i = 0; i < n; i++) a[i] = lo + (hi - lo) * (float)rng.NextDouble();
            return a;
        }
        long nqk = (long)B * T * H * K, nv = (long)B * T * H * V, ng = (long)B * T * H;
        var tensors = new List<Tensor>();
        Tensor Make(float[] a, params int[] shape) { var t = backend.FromArray(a, shape); tensors.Add(t); return t; }
        Tensor Zero(params int[] shape) { var t = backend.Allocate(shape); tensors.Add(t); return t; }
        try
        {
            var q = Make(Rand(nqk, -1, 1), B, T, H, K);
            var k = Make(Rand(nqk, -1, 1), B, T, H, K);
            var v = Make(Rand(nv, -1, 1), B, T, H, V);
            var g = Make(Rand(ng, -0.1f, -1e-4f), B, T, H);
            var beta = Make(Rand(ng, 0, 1), B, T, H);
            var o = Zero(B, T, H, V);
            var dO = Make(Rand(nv, -1, 1), B, T, H, V);
            var dq = Zero(B, T, H, K);
            var dk = Zero(B, T, H, K);
            var dv = Zero(B, T, H, V);
            var dg = Zero(B, T, H);
            var db = Zero(B, T, H);
            double Time(GdnMode mode)
            {
                var spec = new GdnSpec(1f / MathF.Sqrt(K), L2NormQK: true, mode, chunkSize);
                var times = new double[repeats];
                for (int r = -1; r < repeats; r++)
                {
                    var sw = Stopwatch.StartNew();
                    backend.GdnForward(q, k, v, g, beta, null, o, null, spec);
                    backend.GdnBackward(q, k, v, g, beta, null, dO, null, dq, dk, dv, dg, db, null, spec);
                    backend.Synchronize();
                    if (r >= 0) times[r] = sw.Elapsed.TotalSeconds;
                }
                Array.Sort(times);
                return times[repeats / 2];
            }
            NotSupportedException? refused = null;
            double TimeOrInfinity(GdnMode mode)
            {
                try { return Time(mode); }
                catch (NotSupportedException e) { refused = e; return double.PositiveInfinity; }
            }
            double chunked = TimeOrInfinity(GdnMode.Chunked), recurrent = TimeOrInfinity(GdnMode.Recurrent);
            if (double.IsPositiveInfinity(chunked) && double.IsPositiveInfinity(recurrent))
                throw new NotSupportedException($"GdnModeSelector: the backend supports neither GDN form for B={B} T={T} H={H} K={K} V={V}", refused);
            return new GdnTiming(chunked, recurrent, B, T, H, K, V);
        }
        finally
        {
            foreach (var t in tensors) t.Dispose();
        }
    }

    /// <summary>The faster form for this backend and shape (see <see cref="Measure"/>); callers cache the answer.</summary>
    public static GdnMode Choose(IBackend backend, int T, int H = 8, int K = 64, int V = 64) =>
        Measure(backend, 1, Math.Min(T, 4096), H, K, V, repeats: 1).Faster;
}
