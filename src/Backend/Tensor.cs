// Tensor: a dense, row-major block of fp32 (or int32 index) elements owned by one backend.
// Compute is always fp32; bf16/fp16 weights are widened when loaded (see src/Pipeline/Io/Safetensors.fs).
namespace TaylorCalibrate.Backend;

/// <summary>Element type of a tensor's storage.</summary>
public enum DType
{
    /// <summary>32-bit IEEE float: every activation, weight and gradient.</summary>
    F32,
    /// <summary>32-bit signed integer: token ids and targets.</summary>
    I32,
}

/// <summary>
/// A dense row-major tensor living on one backend. Create tensors with <see cref="IBackend.Allocate"/>;
/// move data with <see cref="IBackend.Upload(Tensor, System.ReadOnlySpan{float})"/> and
/// <see cref="IBackend.Download(Tensor, System.Span{float})"/>. Elements are never shared between tensors.
/// </summary>
public abstract class Tensor : IDisposable
{
    /// <summary>Creates the shape bookkeeping; backends add the storage.</summary>
    /// <exception cref="ArgumentException">A dimension is negative.</exception>
    protected Tensor(int[] shape, DType dtype)
    {
        foreach (var d in shape)
            if (d < 0) throw new ArgumentException($"tensor shape [{string.Join(",", shape)}] has a negative dimension");
        Shape = (int[])shape.Clone();
        DType = dtype;
        long n = 1;
        foreach (var d in shape) n *= d;
        Count = n;
    }

    /// <summary>Dimensions, outermost first.</summary>
    public int[] Shape { get; }
    /// <summary>Element type.</summary>
    public DType DType { get; }
    /// <summary>Number of elements (product of <see cref="Shape"/>; 1 for a scalar).</summary>
    public long Count { get; }
    /// <summary>Number of dimensions.</summary>
    public int Rank => Shape.Length;
    /// <summary>The backend that owns the storage.</summary>
    public abstract IBackend Backend { get; }
    /// <summary>Whether <see cref="Dispose"/> has run.</summary>
    public bool IsDisposed { get; private set; }

    /// <summary>Size of dimension <paramref name="i"/>; negative counts from the end.</summary>
    public int Dim(int i) => Shape[i < 0 ? Shape.Length + i : i];

    /// <summary>Shape as text, e.g. <c>[2,3,4]</c>, for error messages.</summary>
    public string ShapeText => "[" + string.Join(",", Shape) + "]";

    /// <inheritdoc />
    public override string ToString() => $"{DType}{ShapeText}";

    /// <summary>Releases the storage.</summary>
    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        Release();
        GC.SuppressFinalize(this);
    }

    /// <summary>Backend-specific release of the storage.</summary>
    protected abstract void Release();
}
