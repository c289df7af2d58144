// Host-side RoPE angle tables: cos/sin of pos·θ^{−2i/D} (with optional Llama-3 frequency scaling), the
// input of IBackend.Rope. Computing them on the host keeps every scaling rule out of the kernels.
namespace TaylorCalibrate.Backend;

/// <summary>Llama-3 RoPE frequency scaling (rope_scaling.rope_type = "llama3" in Hugging Face configs).</summary>
public sealed record Llama3RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositions);

/// <summary>Builds cos and sin tables [T, D/2] for <see cref="IBackend.Rope"/>.</summary>
public static class RopeTables
{
    /// <summary>Inverse frequencies θ^{−2i/D} for i &lt; D/2, scaled Llama-3 style when asked.</summary>
    public static double[] InverseFrequencies(int headDim, double theta, Llama3RopeScaling? scaling = null)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"RoPE head dimension must be even and positive, got {headDim}");
        var inv = new double[headDim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            double f = Math.Pow(theta, -2.0 * i / headDim);
            if (scaling is { } s)
            {
                double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
                double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
                double wavelen = 2 * Math.PI / f;
                if (wavelen > lowWavelen) f /= s.Factor;
                else if (wavelen >= highWavelen)
                {
                    double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    f = (1 - smooth) * f / s.Factor + smooth * f;
                }
            }
            inv[i] = f;
        }
        return inv;
    }

    /// <summary>cos and sin [T, D/2] for positions start..start+T−1, computed in double then rounded.</summary>
    public static (float[] Cos, float[] Sin) Build(int positions, int headDim, double theta, Llama3RopeScaling? scaling = null, int start = 0)
    {
        var inv = InverseFrequencies(headDim, theta, scaling);
        int half = headDim / 2;
        var cos = new float[positions * half];
        var sin = new float[positions * half];
        for (int t = 0; t < positions; t++)
            for (int i = 0; i < half; i++)
            {
                double a = (start + t) * inv[i];
                cos[t * half + i] = (float)Math.Cos(a);
                sin[t * half + i] = (float)Math.Sin(a);
            }
        return (cos, sin);
    }
}
