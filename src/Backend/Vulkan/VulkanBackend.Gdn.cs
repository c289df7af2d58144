// Gated delta rule on the Vulkan backend (placeholder while the kernels are written).
namespace TaylorCalibrate.Backend.Vulkan;

public sealed partial class VulkanBackend
{
    /// <inheritdoc />
    public void GdnForward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor o, Tensor? ht, GdnSpec spec)
        => throw new NotSupportedException("GdnForward is not implemented on the Vulkan backend yet");
    /// <inheritdoc />
    public void GdnBackward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor dO, Tensor? dht,
                            Tensor dq, Tensor dk, Tensor dv, Tensor dg, Tensor dbeta, Tensor? dh0, GdnSpec spec)
        => throw new NotSupportedException("GdnBackward is not implemented on the Vulkan backend yet");
}
