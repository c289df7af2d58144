// Storage of the CPU backend: a managed array per tensor (F32 → float[], I32 → int[]).
namespace TaylorCalibrate.Backend.Cpu;

/// <summary>A tensor stored in a managed array. Kernels read <see cref="F"/> or <see cref="I"/> directly.</summary>
public sealed class CpuTensor : Tensor
{
    readonly CpuBackend owner;

    internal CpuTensor(CpuBackend owner, int[] shape, DType dtype) : base(shape, dtype)
    {
        this.owner = owner;
        if (Count > Array.MaxLength) throw new ArgumentException($"tensor {ShapeText} has {Count} elements, more than a CPU array holds");
        if (dtype == DType.F32) F = new float[Count]; else I = new int[Count];
    }

    /// <summary>F32 storage (empty for I32 tensors).</summary>
    public float[] F { get; } = [];
    /// <summary>I32 storage (empty for F32 tensors).</summary>
    public int[] I { get; } = [];
    /// <inheritdoc />
    public override IBackend Backend => owner;
    /// <inheritdoc />
    protected override void Release() { }
}
