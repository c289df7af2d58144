namespace TaylorCalibrate.Backend.Vulkan;


public sealed partial class VulkanBackend
{
    public void RmsNorm(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps) => throw new NotImplementedException();
    public void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dw) => throw new NotImplementedException();
    public void L2Norm(Tensor x, Tensor y, Tensor rstd, int cols, float eps) => throw new NotImplementedException();
    public void L2NormBackward(Tensor dy, Tensor y, Tensor rstd, Tensor dx, int cols) => throw new NotImplementedException();
    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor y, RopeLayout layout, bool inverse) => throw new NotImplementedException();
    public void Embedding(Tensor table, Tensor ids, Tensor y) => throw new NotImplementedException();
    public void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtable) => throw new NotImplementedException();
    public void Softmax(Tensor x, Tensor y, int cols) => throw new NotImplementedException();
    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, int cols) => throw new NotImplementedException();
    public void CrossEntropy(Tensor logits, Tensor targets, Tensor loss, Tensor? dlogits, float gradScale) => throw new NotImplementedException();
    public void KlDivergence(Tensor teacher, Tensor student, Tensor loss, Tensor? dstudent, float gradScale) => throw new NotImplementedException();
    public void Reduce(ReduceOp op, Tensor x, Tensor result) => throw new NotImplementedException();
    public void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWSpec spec) => throw new NotImplementedException();
    public void ClipGradNorm(IReadOnlyList<Tensor> grads, float maxNorm, Tensor norm) => throw new NotImplementedException();
}
