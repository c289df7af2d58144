// Storage of the Vulkan backend: one VkBuffer per tensor, sub-allocated from pooled device memory
// (VulkanMemory.cs). Releasing a tensor while queued work may still use it defers the free until that work
// has finished (CommandRecorder.Defer), so `use t = ...` around queued ops is safe.
namespace TaylorCalibrate.Backend.Vulkan;

/// <summary>A tensor stored in a Vulkan buffer (4 bytes per element, F32 or I32).</summary>
internal sealed class VulkanTensor : Tensor
{
    readonly VulkanBackend owner;

    internal VulkanTensor(VulkanBackend owner, int[] shape, DType dtype, DeviceBuffer buffer) : base(shape, dtype)
    {
        this.owner = owner;
        Buffer = buffer;
    }

    /// <summary>The buffer; <see cref="DeviceBuffer.Size"/> ≥ 4·Count (at least 16 bytes).</summary>
    internal DeviceBuffer Buffer { get; }
    /// <summary>
    /// Smallest and largest id of an I32 tensor when the host knows them (set by an upload or a check, cleared
    /// by any write on the device), so ops that validate ids need no download in the common case.
    /// </summary>
    internal (int Min, int Max)? KnownIdRange { get; set; }
    /// <summary>Bytes of the elements (4·Count).</summary>
    internal ulong Bytes => 4UL * (ulong)Count;
    /// <inheritdoc />
    public override IBackend Backend => owner;
    /// <inheritdoc />
    protected override void Release() => owner.ReleaseBuffer(Buffer);
}
