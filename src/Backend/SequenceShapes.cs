// Argument checks of the sequence mixers (attention, gated delta rule), shared by both backends so that they
// accept the same shapes and reject mistakes with the same messages (IBackend.cs documents the shapes).
namespace TaylorCalibrate.Backend;

/// <summary>Validates and reads the shapes of attention and gated-delta-rule arguments.</summary>
public static class SequenceShapes
{
    /// <summary>Largest head size K or V the gated-delta-rule kernels accept (docs/kernels.md §3.4).</summary>
    public const int GdnMaxHeadDim = 256;

    /// <summary>(B, T, H, Hkv, D) of q [B,T,H,D], k, v [B,T,Hkv,D]; D ≤ <paramref name="maxHeadDim"/>.</summary>
    /// <exception cref="ArgumentException">A shape is wrong, or H is not a multiple of Hkv.</exception>
    public static (int B, int T, int H, int Hkv, int D) Attention(Tensor q, Tensor k, Tensor v, int maxHeadDim = int.MaxValue)
    {
        Check.That(q.Rank == 4, $"tensor 'q' has shape {q.ShapeText}, expected [B,T,H,D]");
        int B = q.Dim(0), T = q.Dim(1), H = q.Dim(2), D = q.Dim(3);
        Check.That(T >= 1 && D >= 1 && H >= 1, $"tensor 'q' has shape {q.ShapeText}, expected T, H, D ≥ 1");
        Check.That(D <= maxHeadDim, $"tensor 'q' has shape {q.ShapeText}: head size {D} exceeds {maxHeadDim}");
        Check.That(k.Rank == 4, $"tensor 'k' has shape {k.ShapeText}, expected [{B},{T},Hkv,{D}]");
        int Hkv = k.Dim(2);
        Check.Shape(k, "k", B, T, Hkv, D);
        Check.That(Hkv >= 1 && H % Hkv == 0, $"tensor 'k' has {Hkv} heads (shape {k.ShapeText}); the {H} query heads of 'q' must be a multiple of it");
        Check.Shape(v, "v", B, T, Hkv, D);
        return (B, T, H, Hkv, D);
    }

    /// <summary>(B, T, H, K, V) of the gated-delta-rule inputs, checking g, beta, h0 and the spec.</summary>
    /// <exception cref="ArgumentException">A shape, head size, mode or chunk size is wrong.</exception>
    public static (int B, int T, int H, int K, int V) Gdn(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, GdnSpec spec)
    {
        Check.That(q.Rank == 4, $"tensor 'q' has shape {q.ShapeText}, expected [B,T,H,K]");
        int B = q.Dim(0), T = q.Dim(1), H = q.Dim(2), K = q.Dim(3);
        Check.That(T >= 1 && H >= 1, $"tensor 'q' has shape {q.ShapeText}, expected T ≥ 1 and H ≥ 1");
        Check.That(K >= 1 && K <= GdnMaxHeadDim, $"tensor 'q' has shape {q.ShapeText}: head size K = {K} must be in 1..{GdnMaxHeadDim}");
        Check.Shape(k, "k", B, T, H, K);
        Check.That(v.Rank == 4, $"tensor 'v' has shape {v.ShapeText}, expected [{B},{T},{H},V]");
        int V = v.Dim(3);
        Check.Shape(v, "v", B, T, H, V);
        Check.That(V >= 1 && V <= GdnMaxHeadDim, $"tensor 'v' has shape {v.ShapeText}: head size V = {V} must be in 1..{GdnMaxHeadDim}");
        Check.Shape(g, "g", B, T, H);
        Check.Shape(beta, "beta", B, T, H);
        if (h0 is not null) Check.Shape(h0, "h0", B, H, K, V);
        Check.That(spec.Mode is GdnMode.Chunked or GdnMode.Recurrent, $"GdnSpec.Mode {spec.Mode} is not a known mode");
        Check.That(spec.Mode != GdnMode.Chunked || spec.ChunkSize is 16 or 32 or 64,
                   $"GdnSpec.ChunkSize is {spec.ChunkSize}, expected 16, 32 or 64");
        return (B, T, H, K, V);
    }
}
