// Small value types that parameterise the ops of IBackend. Maths of each op: docs/kernels.md.
namespace TaylorCalibrate.Backend;

/// <summary>
/// C = α·op(A)·op(B) + β·C, batched. op(A) is [M,K], op(B) is [K,N], C is [M,N].
/// A is stored [M,K] (row stride <see cref="Lda"/> ≥ K), or [K,M] when <see cref="TransA"/> (Lda ≥ M);
/// B is stored [K,N] (Ldb ≥ N), or [N,K] when <see cref="TransB"/> (Ldb ≥ K); C is [M,N] (Ldc ≥ N).
/// A leading dimension of 0 means "packed" (the natural value). Batch i uses A + OffsetA + i·StrideA (and
/// likewise B, C); a stride of 0 with Batch &gt; 1 means the packed matrix size. Fold a batch that shares
/// one weight matrix into M instead of using a broadcasting stride.
/// </summary>
public readonly record struct GemmSpec(
    int M, int N, int K,
    bool TransA = false, bool TransB = false,
    float Alpha = 1f, float Beta = 0f,
    int Batch = 1,
    int Lda = 0, int Ldb = 0, int Ldc = 0,
    long StrideA = 0, long StrideB = 0, long StrideC = 0,
    long OffsetA = 0, long OffsetB = 0, long OffsetC = 0)
{
    /// <summary>Leading dimension of A as stored.</summary>
    public int LdaResolved => Lda != 0 ? Lda : (TransA ? M : K);
    /// <summary>Leading dimension of B as stored.</summary>
    public int LdbResolved => Ldb != 0 ? Ldb : (TransB ? K : N);
    /// <summary>Leading dimension of C.</summary>
    public int LdcResolved => Ldc != 0 ? Ldc : N;
    /// <summary>Element distance between consecutive A matrices of the batch.</summary>
    public long StrideAResolved => StrideA != 0 ? StrideA : (long)(TransA ? K : M) * LdaResolved;
    /// <summary>Element distance between consecutive B matrices of the batch.</summary>
    public long StrideBResolved => StrideB != 0 ? StrideB : (long)(TransB ? N : K) * LdbResolved;
    /// <summary>Element distance between consecutive C matrices of the batch.</summary>
    public long StrideCResolved => StrideC != 0 ? StrideC : (long)M * LdcResolved;
    /// <summary>Useful floating-point operations: 2·M·N·K per batch entry.</summary>
    public double Flops => 2.0 * M * N * K * Batch;

    /// <summary>Elements of A the spec touches (last batch's last element + 1).</summary>
    public long ExtentA => K == 0 || M == 0 ? 0 : OffsetA + (Batch - 1) * StrideAResolved + (long)((TransA ? K : M) - 1) * LdaResolved + (TransA ? M : K);
    /// <summary>Elements of B the spec touches.</summary>
    public long ExtentB => K == 0 || N == 0 ? 0 : OffsetB + (Batch - 1) * StrideBResolved + (long)((TransB ? N : K) - 1) * LdbResolved + (TransB ? K : N);
    /// <summary>Elements of C the spec touches.</summary>
    public long ExtentC => M == 0 || N == 0 ? 0 : OffsetC + (Batch - 1) * StrideCResolved + (long)(M - 1) * LdcResolved + N;
}

/// <summary>Pointwise activation functions with a derivative.</summary>
public enum UnaryOp
{
    /// <summary>x·σ(x); derivative σ(x)(1 + x(1 − σ(x))).</summary>
    Silu,
    /// <summary>σ(x) = 1/(1 + e^−x); derivative σ(1 − σ).</summary>
    Sigmoid,
    /// <summary>max(x,0) + log1p(e^−|x|); derivative σ(x).</summary>
    Softplus,
    /// <summary>e^x; derivative e^x.</summary>
    Exp,
    /// <summary>ln x; derivative 1/x.</summary>
    Log,
}

/// <summary>Deterministic (fixed-order) reductions of a whole tensor to one value.</summary>
public enum ReduceOp
{
    /// <summary>Σx.</summary>
    Sum,
    /// <summary>Σx / n.</summary>
    Mean,
    /// <summary>Σx².</summary>
    SumOfSquares,
    /// <summary>max |x| (0 for an empty tensor).</summary>
    MaxAbs,
}

/// <summary>How RoPE pairs the coordinates of a head vector.</summary>
public enum RopeLayout
{
    /// <summary>Hugging Face rotate-half: coordinate i pairs with i + D/2.</summary>
    HalfSplit,
    /// <summary>llama2.c / Meta: coordinates 2i and 2i+1 form a pair.</summary>
    Adjacent,
}

/// <summary>
/// One decoupled AdamW step (PyTorch semantics): θ ← θ(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
/// θ ← θ − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε). <see cref="Step"/> t starts at 1.
/// </summary>
public readonly record struct AdamWSpec(
    float LearningRate, int Step, float WeightDecay = 0.01f,
    float Beta1 = 0.9f, float Beta2 = 0.999f, float Epsilon = 1e-8f);

/// <summary>Which algorithm evaluates the gated delta rule.</summary>
public enum GdnMode
{
    /// <summary>Chunked WY form (parallel over time inside a chunk; the GPU form).</summary>
    Chunked,
    /// <summary>Token-by-token recurrence (decoding; reference-like).</summary>
    Recurrent,
}

/// <summary>Options of the gated delta rule kernels. Scale is usually K^−½.</summary>
public readonly record struct GdnSpec(float Scale, bool L2NormQK = false, GdnMode Mode = GdnMode.Chunked, int ChunkSize = 64);
