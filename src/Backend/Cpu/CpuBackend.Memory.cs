// Memory ops of the CPU backend: tensors are managed arrays; every op runs synchronously on the caller's
// thread (parallel inside), so Synchronize has nothing to wait for.
namespace TaylorCalibrate.Backend.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>The CPU tensor behind <paramref name="t"/>, checking ownership, dtype and liveness.</summary>
    internal CpuTensor F32(Tensor t, string name)
    {
        var c = Own(t, name);
        if (c.DType != DType.F32) throw new ArgumentException($"tensor '{name}' is {c.DType}, expected F32");
        return c;
    }

    /// <summary>Like <see cref="F32"/> for I32 tensors.</summary>
    internal CpuTensor I32(Tensor t, string name)
    {
        var c = Own(t, name);
        if (c.DType != DType.I32) throw new ArgumentException($"tensor '{name}' is {c.DType}, expected I32");
        return c;
    }

    CpuTensor Own(Tensor t, string name)
    {
        ArgumentNullException.ThrowIfNull(t, name);
        if (t is not CpuTensor c || !ReferenceEquals(c.Backend, this))
            throw new ArgumentException($"tensor '{name}' belongs to backend {t.Backend.Name}, not {Name}");
        if (c.IsDisposed) throw new ObjectDisposedException($"tensor '{name}'");
        return c;
    }

    /// <inheritdoc />
    public Tensor Allocate(int[] shape, DType dtype = DType.F32) => new CpuTensor(this, shape, dtype);

    /// <inheritdoc />
    public void Upload(Tensor t, ReadOnlySpan<float> data)
    {
        var c = F32(t, "upload target");
        if (data.Length != c.Count) throw new ArgumentException($"upload of {data.Length} values into tensor {c.ShapeText} ({c.Count} elements)");
        data.CopyTo(c.F);
    }

    /// <inheritdoc />
    public void Upload(Tensor t, ReadOnlySpan<int> data)
    {
        var c = I32(t, "upload target");
        if (data.Length != c.Count) throw new ArgumentException($"upload of {data.Length} ids into tensor {c.ShapeText} ({c.Count} elements)");
        data.CopyTo(c.I);
    }

    /// <inheritdoc />
    public void Download(Tensor t, Span<float> data)
    {
        var c = F32(t, "download source");
        if (data.Length != c.Count) throw new ArgumentException($"download of tensor {c.ShapeText} ({c.Count} elements) into {data.Length} values");
        c.F.AsSpan().CopyTo(data);
    }

    /// <inheritdoc />
    public void Download(Tensor t, Span<int> data)
    {
        var c = I32(t, "download source");
        if (data.Length != c.Count) throw new ArgumentException($"download of tensor {c.ShapeText} ({c.Count} elements) into {data.Length} ids");
        c.I.AsSpan().CopyTo(data);
    }

    /// <inheritdoc />
    public void Synchronize() { }

    /// <inheritdoc />
    public void Copy(Tensor src, long srcOffset, Tensor dst, long dstOffset, long count)
    {
        var s = Own(src, "src");
        var d = Own(dst, "dst");
        if (s.DType != d.DType) throw new ArgumentException($"copy from {s.DType} tensor 'src' to {d.DType} tensor 'dst'");
        if (srcOffset < 0 || dstOffset < 0 || count < 0 || srcOffset + count > s.Count || dstOffset + count > d.Count)
            throw new ArgumentException($"copy of {count} elements from 'src' {s.ShapeText} at {srcOffset} to 'dst' {d.ShapeText} at {dstOffset} is out of range");
        if (s.DType == DType.F32) Array.Copy(s.F, srcOffset, d.F, dstOffset, count);
        else Array.Copy(s.I, srcOffset, d.I, dstOffset, count);
    }

    /// <inheritdoc />
    public void Fill(Tensor t, float value) => Array.Fill(F32(t, "t").F, value);
}
