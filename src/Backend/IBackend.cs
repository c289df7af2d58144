// The compute-backend contract. Two implementations: Cpu/CpuBackend.cs (multi-threaded SIMD C#) and
// Vulkan/VulkanBackend.cs (GLSL compute shaders). The naive double-precision reference that *defines* each
// op lives in the tests (tests/TaylorCalibrate.Tests/Reference/*.fs). Maths: docs/kernels.md.
//
// Conventions shared by every op:
// - row-major; activations [B,T,H,D] contiguous; weights [out,in];
// - ops are queued in order; Download/Synchronize wait for everything queued before them;
// - forward ops overwrite their outputs; backward ops overwrite input gradients (dx) and ACCUMULATE into
//   parameter gradients (dw, dtable: "+="), so the caller zeroes parameter gradients once per step;
// - shape errors throw ArgumentException naming the tensor and both shapes.
namespace TaylorCalibrate.Backend;

/// <summary>What a device is, for `taylor-calibrate devices` and for choosing one.</summary>
public sealed record DeviceInfo(
    string Name, string Kind, string Vendor, string Driver, long MemoryBytes, int SubgroupSize, string Details);

/// <summary>Every op the pipeline needs, forward and backward. Not thread-safe: one caller at a time.</summary>
public interface IBackend : IDisposable
{
    /// <summary>Short device id as accepted by <c>--device</c>, e.g. <c>cpu</c> or <c>vulkan:0</c>.</summary>
    string Name { get; }
    /// <summary>Description of the device.</summary>
    DeviceInfo Info { get; }

    // ---- memory ----------------------------------------------------------------------------------------
    /// <summary>A new zero-filled tensor.</summary>
    Tensor Allocate(int[] shape, DType dtype = DType.F32);
    /// <summary>Copies host floats into an F32 tensor (lengths must match).</summary>
    void Upload(Tensor t, ReadOnlySpan<float> data);
    /// <summary>Copies host ints into an I32 tensor.</summary>
    void Upload(Tensor t, ReadOnlySpan<int> data);
    /// <summary>Waits for queued work, then copies an F32 tensor to the host.</summary>
    void Download(Tensor t, Span<float> data);
    /// <summary>Waits for queued work, then copies an I32 tensor to the host.</summary>
    void Download(Tensor t, Span<int> data);
    /// <summary>Waits until every queued op has finished.</summary>
    void Synchronize();
    /// <summary>dst[dstOffset + i] = src[srcOffset + i] for i &lt; count (same dtype).</summary>
    void Copy(Tensor src, long srcOffset, Tensor dst, long dstOffset, long count);
    /// <summary>Sets every element of an F32 tensor to <paramref name="value"/>.</summary>
    void Fill(Tensor t, float value);

    // ---- GEMM ------------------------------------------------------------------------------------------
    /// <summary>C = α·op(A)·op(B) + β·C with fp32 products and fp32 accumulation; see <see cref="GemmSpec"/>.</summary>
    void Gemm(Tensor a, Tensor b, Tensor c, GemmSpec spec);

    // ---- elementwise (all tensors of equal element count) ----------------------------------------------
    /// <summary>y = a + b.</summary>
    void Add(Tensor a, Tensor b, Tensor y);
    /// <summary>y = a ⊙ b.</summary>
    void Mul(Tensor a, Tensor b, Tensor y);
    /// <summary>y = s·x (y may be x).</summary>
    void Scale(Tensor x, float s, Tensor y);
    /// <summary>y += s·x (gradient accumulation).</summary>
    void Axpy(float s, Tensor x, Tensor y);
    /// <summary>y = f(x) (y may be x).</summary>
    void Unary(UnaryOp op, Tensor x, Tensor y);
    /// <summary>dx = dy ⊙ f′(x).</summary>
    void UnaryBackward(UnaryOp op, Tensor x, Tensor dy, Tensor dx);
    /// <summary>y = silu(a) ⊙ b.</summary>
    void SwiGlu(Tensor a, Tensor b, Tensor y);
    /// <summary>da = dy ⊙ b ⊙ silu′(a); db = dy ⊙ silu(a).</summary>
    void SwiGluBackward(Tensor a, Tensor b, Tensor dy, Tensor da, Tensor db);

    // ---- normalisation and positions -------------------------------------------------------------------
    /// <summary>Rows of length C = w.Count: y = w ⊙ x·r, r = (mean x² + eps)^−½; rstd [rows] receives r.</summary>
    void RmsNorm(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps);
    /// <summary>dx = r·(w⊙dy) − x·r³·mean((w⊙dy)⊙x); dw += Σ_rows dy ⊙ x·r.</summary>
    void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dw);
    /// <summary>Rows of length <paramref name="cols"/>: y = x·rstd, rstd = (Σx² + eps)^−½ (eps 1e-6 by convention).</summary>
    void L2Norm(Tensor x, Tensor y, Tensor rstd, int cols, float eps);
    /// <summary>dx = rstd·(dy − (dy·y)·y).</summary>
    void L2NormBackward(Tensor dy, Tensor y, Tensor rstd, Tensor dx, int cols);
    /// <summary>
    /// Rotary embedding of x [B,T,H,D] at positions 0..T−1 using tables cos, sin [T, D/2] (angle of pair i at
    /// position t; see <see cref="RopeTables"/>). <paramref name="inverse"/> rotates by −angle, which is
    /// the backward. y may be x.
    /// </summary>
    void Rope(Tensor x, Tensor cos, Tensor sin, Tensor y, RopeLayout layout, bool inverse);

    // ---- embeddings ------------------------------------------------------------------------------------
    /// <summary>y[n,:] = table[ids[n],:]; table [V,D], ids I32 [N], y [N,D]. An id outside [0,V) is an input error (ArgumentException naming 'ids') raised before any work is queued, on every backend.</summary>
    void Embedding(Tensor table, Tensor ids, Tensor y);
    /// <summary>dtable[ids[n],:] += dy[n,:], deterministic (no float atomics; fixed summation order). Ids outside [0,V) are an input error, as in the forward.</summary>
    void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtable);

    // ---- softmax and losses over a vocabulary ----------------------------------------------------------
    /// <summary>Row softmax over the last <paramref name="cols"/> elements.</summary>
    void Softmax(Tensor x, Tensor y, int cols);
    /// <summary>dx = y ⊙ (dy − Σ dy⊙y).</summary>
    void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, int cols);
    /// <summary>
    /// Per row n of logits [N,V]: loss[n] = lse(z_n) − z_n[target_n] (0 where target &lt; 0). When
    /// <paramref name="dlogits"/> is given, dlogits = gradScale·(softmax(z) − onehot(target)) (rows with
    /// target &lt; 0 get 0). dlogits may be the logits tensor itself: the op streams over vocabulary blocks
    /// with an online log-sum-exp and never allocates a second [N,V] buffer. A target ≥ V is an input error
    /// (ArgumentException naming 'targets') raised before any work is queued, on every backend.
    /// </summary>
    void CrossEntropy(Tensor logits, Tensor targets, Tensor loss, Tensor? dlogits, float gradScale);
    /// <summary>
    /// Per row: loss[n] = KL(p_T‖p_S) = Σ p_T(ln p_T − ln p_S), p = softmax of teacher/student logits [N,V].
    /// When <paramref name="dstudent"/> is given, dstudent = gradScale·(p_S − p_T); it may alias student.
    /// </summary>
    void KlDivergence(Tensor teacher, Tensor student, Tensor loss, Tensor? dstudent, float gradScale);

    // ---- reductions and optimiser ----------------------------------------------------------------------
    /// <summary>result[0] = reduction of every element of x, in a fixed (deterministic) order. Over an empty x: Sum,
    /// SumOfSquares and MaxAbs give 0, Mean gives NaN (0/0), on every backend.</summary>
    void Reduce(ReduceOp op, Tensor x, Tensor result);
    /// <summary>One AdamW step on param with gradient grad and moments m, v (all same count).</summary>
    void AdamW(Tensor param, Tensor grad, Tensor m, Tensor v, AdamWSpec spec);
    /// <summary>
    /// N = √(Σ over all tensors Σg²); norm[0] = N; if N &gt; maxNorm every gradient is scaled by maxNorm/(N + 1e-6).
    /// </summary>
    void ClipGradNorm(IReadOnlyList<Tensor> grads, float maxNorm, Tensor norm);
    // ---- sequence mixers (maths: docs/kernels.md §2, §3) ------------------------------------------------
    /// <summary>
    /// Causal GQA softmax attention, flash style. q [B,T,H,D]; k, v [B,T,Hkv,D] (H a multiple of Hkv; query
    /// head h reads kv head h/(H/Hkv)); o [B,T,H,D]; lse [B,H,T] receives m + ln l (natural log) per row.
    /// stats [B,H,2], when given, receives per head the mean attention distance (Σ_j A_ij·max(i−j,0.5),
    /// averaged over rows) and the mean entropy (−Σ_j A_ij ln A_ij, averaged over rows), computed in the same
    /// pass. probs [B,H,T,T], when given, receives the probabilities (small T only; diagnostics).
    /// </summary>
    void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale, Tensor? stats = null, Tensor? probs = null);
    /// <summary>dq [B,T,H,D], dk, dv [B,T,Hkv,D] (summed over the query heads of a group), from the forward's o and lse.</summary>
    void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, Tensor dq, Tensor dk, Tensor dv, float scale);
    /// <summary>
    /// Gated delta rule: per (b,h), S_t = e^{g_t}(I − β_t k_t k_tᵀ)S_{t−1} + β_t k_t v_tᵀ (S [K,V]),
    /// o_t = scale·S_tᵀq_t. q, k [B,T,H,K]; v [B,T,H,V]; g, beta [B,T,H]; h0, ht [B,H,K,V] optional;
    /// o [B,T,H,V]. With <see cref="GdnSpec.L2NormQK"/> q and k are L2-normalised inside the kernel.
    /// </summary>
    void GdnForward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor o, Tensor? ht, GdnSpec spec);
    /// <summary>
    /// Reverse mode of <see cref="GdnForward"/>: recomputes the states from the inputs (nothing saved),
    /// takes dO [B,T,H,V] and optional dht [B,H,K,V]; writes dq, dk, dv, dg, dbeta and dh0 (when h0 is given).
    /// </summary>
    void GdnBackward(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? h0, Tensor dO, Tensor? dht,
                     Tensor dq, Tensor dk, Tensor dv, Tensor dg, Tensor dbeta, Tensor? dh0, GdnSpec spec);
}
