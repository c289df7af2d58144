// STUB (issue 3): attention and gated-delta-rule kernels of the VulkanBackend; replaced by the real ones.
namespace TaylorCalibrate.Backend.Vulkan;

public sealed partial class VulkanBackend
{
    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale, Tensor? stats, Tensor? probs) => throw new NotImplementedException();
    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, Tensor dq, Tensor dk, Tensor dv, float scale) => throw new NotImplementedException();
    public void GdnForward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor o, Tensor? ht, GdnSpec spec) => throw new NotImplementedException();
    public void GdnBackward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor dO, Tensor? dht, Tensor dq, Tensor dk, Tensor dv, Tensor dg, Tensor dbeta, Tensor? dh0, GdnSpec spec) => throw new NotImplementedException();
}
