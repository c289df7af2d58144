// STUB: replaced by the real implementation.
namespace TaylorCalibrate.Backend.Vulkan;

public sealed partial class VulkanBackend : IBackend
{
    public VulkanBackend(int index) { }

    public string Name => throw new NotImplementedException();
    public DeviceInfo Info => throw new NotImplementedException();
    public Tensor Allocate(int[] shape, DType dtype = DType.F32) => throw new NotImplementedException();
    public void Upload(Tensor t, ReadOnlySpan<float> data) => throw new NotImplementedException();
    public void Upload(Tensor t, ReadOnlySpan<int> data) => throw new NotImplementedException();
    public void Download(Tensor t, Span<float> data) => throw new NotImplementedException();
    public void Download(Tensor t, Span<int> data) => throw new NotImplementedException();
    public void Synchronize() => throw new NotImplementedException();
    public void Copy(Tensor src, long srcOffset, Tensor dst, long dstOffset, long count) => throw new NotImplementedException();
    public void Fill(Tensor t, float value) => throw new NotImplementedException();
    public void Gemm(Tensor a, Tensor b, Tensor c, GemmSpec spec) => throw new NotImplementedException();
    public void Add(Tensor a, Tensor b, Tensor y) => throw new NotImplementedException();
    public void Mul(Tensor a, Tensor b, Tensor y) => throw new NotImplementedException();
    public void Scale(Tensor x, float s, Tensor y) => throw new NotImplementedException();
    public void Axpy(float s, Tensor x, Tensor y) => throw new NotImplementedException();
    public void Unary(UnaryOp op, Tensor x, Tensor y) => throw new NotImplementedException();
    public void UnaryBackward(UnaryOp op, Tensor x, Tensor dy, Tensor dx) => throw new NotImplementedException();
    public void SwiGlu(Tensor a, Tensor b, Tensor y) => throw new NotImplementedException();
    public void SwiGluBackward(Tensor a, Tensor b, Tensor dy, Tensor da, Tensor db) => throw new NotImplementedException();
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
    public void Dispose() { }
}
