// Conveniences over the IBackend memory calls, for scripts and tests.
namespace TaylorCalibrate.Backend;

/// <summary>Host/device transfer helpers.</summary>
public static class TensorExtensions
{
    /// <summary>Allocates an F32 tensor of <paramref name="shape"/> and uploads <paramref name="data"/>.</summary>
    /// <exception cref="ArgumentException">data.Length differs from the shape's element count.</exception>
    public static Tensor FromArray(this IBackend backend, float[] data, params int[] shape)
    {
        var t = backend.Allocate(shape);
        if (t.Count != data.Length)
        {
            t.Dispose();
            throw new ArgumentException($"{data.Length} values do not fill shape [{string.Join(",", shape)}]");
        }
        backend.Upload(t, data);
        return t;
    }

    /// <summary>Allocates an I32 tensor and uploads <paramref name="data"/>.</summary>
    public static Tensor FromInts(this IBackend backend, int[] data, params int[] shape)
    {
        var t = backend.Allocate(shape, DType.I32);
        if (t.Count != data.Length)
        {
            t.Dispose();
            throw new ArgumentException($"{data.Length} ids do not fill shape [{string.Join(",", shape)}]");
        }
        backend.Upload(t, data);
        return t;
    }

    /// <summary>Downloads an F32 tensor into a new array.</summary>
    public static float[] ToArray(this Tensor t)
    {
        var a = new float[t.Count];
        t.Backend.Download(t, a);
        return a;
    }

    /// <summary>Downloads an I32 tensor into a new array.</summary>
    public static int[] ToIntArray(this Tensor t)
    {
        var a = new int[t.Count];
        t.Backend.Download(t, a);
        return a;
    }
}
