// Softmax and the vocabulary losses of the CPU backend (docs/kernels.md §4, "Cross-entropy / KL"):
//   softmax   y = e^{x − max} / Σ e^{x − max};  backward dx = y ⊙ (dy − Σ dy ⊙ y)
//   CE        loss[n] = lse(z_n) − z_n[y_n] (0 where y_n < 0);  dz = gradScale·(softmax(z) − onehot(y))
//   KL        loss[n] = Σ p_T (ln p_T − ln p_S);  dz_S = gradScale·(p_S − p_T)
// Reductions and the shifted exponentials run in the backend's vector width (Simd.cs); the other elementwise
// steps are TensorPrimitives, which takes 512-bit vectors by itself wherever the runtime accelerates them.
// The losses stream over each row in vocabulary blocks of 1024 with an online log-sum-exp
// (m' = max(m, max_block); s ← s·e^{m−m'} + Σ e^{z−m'}), then make a second pass for the loss terms and
// gradients. Scratch is three 1024-float stack blocks per task, never an [N, V] buffer, and a gradient
// block is written only after its inputs were read, so the gradient may be the logits tensor itself.
using System.Numerics.Tensors;

namespace TaylorCalibrate.Backend.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Vocabulary block of the streamed losses (three stack temporaries of this size).</summary>
    const int VocabBlock = 1024;

    /// <inheritdoc />
    /// <exception cref="ArgumentException">x is not made of rows of <paramref name="cols"/>, or y's size differs.</exception>
    public void Softmax(Tensor x, Tensor y, int cols)
    {
        var (tx, ty) = SameSize(x, "x", y, "y");
        int rows = Check.Rows(tx, "x", cols);
        bool wide = Wide;
        Workers.ForRows(rows, cols, (first, count) =>
        {
            for (int r = first; r < first + count; r++)
            {
                var xr = tx.F.AsSpan(r * cols, cols);
                var yr = ty.F.AsSpan(r * cols, cols);
                float sum = Simd.ExpShiftedSum(xr, Simd.Max(xr, wide), yr, wide);
                TensorPrimitives.Divide(yr, sum, yr);
            }
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">Sizes differ or y is not made of rows of <paramref name="cols"/>.</exception>
    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, int cols)
    {
        var (ty, tdy, tdx) = SameSize(y, "y", dy, "dy", dx, "dx");
        int rows = Check.Rows(ty, "y", cols);
        bool wide = Wide;
        Workers.ForRows(rows, cols, (first, count) =>
        {
            for (int r = first; r < first + count; r++)
            {
                var yr = ty.F.AsSpan(r * cols, cols);
                var dyr = tdy.F.AsSpan(r * cols, cols);
                // (dy − Σ dy⊙y) ⊙ y in one elementwise pass, so dx may alias y or dy.
                TensorPrimitives.AddMultiply(dyr, -Simd.Dot(dyr, yr, wide), yr, tdx.F.AsSpan(r * cols, cols));
            }
        });
    }

    /// <summary>Online log-sum-exp accumulator: running max m and Σ e^{z − m}.</summary>
    struct OnlineLse
    {
        float max, sum;

        public static OnlineLse Empty => new() { max = float.NegativeInfinity, sum = 0 };

        /// <summary>Folds one block in; <paramref name="scratch"/> (same length) is overwritten.</summary>
        public void Add(ReadOnlySpan<float> z, Span<float> scratch, bool wide)
        {
            float m = Simd.Max(z, wide);
            if (m > max)                                   // rescale only on a new max (−∞ − −∞ would be NaN)
            {
                sum *= MathF.Exp(max - m);
                max = m;
            }
            if (max == float.NegativeInfinity) return;     // every logit so far is −∞: contributes nothing
            sum += Simd.ExpShiftedSum(z, max, scratch, wide);
        }

        /// <summary>ln Σ e^z = m + ln s.</summary>
        public readonly float Value => max + MathF.Log(sum);
    }

    /// <summary>Checks [N, V] logits against per-row tensors; returns (N, V).</summary>
    static (int N, int V) CheckLogits(CpuTensor logits, string name, CpuTensor loss)
    {
        Check.That(logits.Rank >= 1 && logits.Dim(-1) > 0, $"tensor '{name}' has shape {logits.ShapeText}, expected [N,V] with V > 0");
        int v = logits.Dim(-1);
        int n = Check.Rows(logits, name, v);
        CheckPerRow(loss, "loss", n, logits, name);
        return (n, v);
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">Sizes differ, targets are not I32 with one per row, or a target is ≥ V.</exception>
    public void CrossEntropy(Tensor logits, Tensor targets, Tensor loss, Tensor? dlogits, float gradScale)
    {
        var (tz, ty, tl) = (F32(logits, "logits"), I32(targets, "targets"), F32(loss, "loss"));
        var (n, v) = CheckLogits(tz, "logits", tl);
        CheckPerRow(ty, "targets", n, tz, "logits");
        var td = dlogits is null ? null : SameSize(logits, "logits", dlogits, "dlogits").Item2;
        for (int r = 0; r < n; r++)
            if (ty.I[r] >= v)
                throw new ArgumentException($"tensor 'targets' {ty.ShapeText} holds {ty.I[r]} at row {r}, outside [0,{v}) of 'logits' {tz.ShapeText}");

        bool wide = Wide;
        Workers.ForRows(n, v, (first, count) =>
        {
            Span<float> scratch = stackalloc float[VocabBlock];
            for (int r = first; r < first + count; r++)
            {
                var z = tz.F.AsSpan(r * v, v);
                int target = ty.I[r];
                var lse = OnlineLse.Empty;
                for (int o = 0; o < v; o += VocabBlock)
                {
                    int len = Math.Min(VocabBlock, v - o);
                    lse.Add(z.Slice(o, len), scratch[..len], wide);
                }
                float logZ = lse.Value;
                tl.F[r] = target < 0 ? 0f : logZ - z[target];        // read z[target] before any write
                if (td is null) continue;
                var d = td.F.AsSpan(r * v, v);
                if (target < 0) { d.Clear(); continue; }
                for (int o = 0; o < v; o += VocabBlock)              // d = gradScale·e^{z − lse}
                {
                    int len = Math.Min(VocabBlock, v - o);
                    Simd.ScaledExpShifted(z.Slice(o, len), logZ, gradScale, d.Slice(o, len), wide);
                }
                d[target] -= gradScale;                                // − gradScale·onehot
            }
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">teacher, student (and dstudent) differ in size, or loss is not one per row.</exception>
    public void KlDivergence(Tensor teacher, Tensor student, Tensor loss, Tensor? dstudent, float gradScale)
    {
        var (tt, ts) = SameSize(teacher, "teacher", student, "student");
        var tl = F32(loss, "loss");
        var (n, v) = CheckLogits(tt, "teacher", tl);
        var td = dstudent is null ? null : SameSize(student, "student", dstudent, "dstudent").Item2;

        bool wide = Wide;
        Workers.ForRows(n, v, (first, count) =>
        {
            Span<float> t1 = stackalloc float[VocabBlock];
            Span<float> t2 = stackalloc float[VocabBlock];
            Span<float> t3 = stackalloc float[VocabBlock];
            for (int r = first; r < first + count; r++)
            {
                var zt = tt.F.AsSpan(r * v, v);
                var zs = ts.F.AsSpan(r * v, v);
                OnlineLse lseT = OnlineLse.Empty, lseS = OnlineLse.Empty;
                for (int o = 0; o < v; o += VocabBlock)
                {
                    int len = Math.Min(VocabBlock, v - o);
                    lseT.Add(zt.Slice(o, len), t1[..len], wide);
                    lseS.Add(zs.Slice(o, len), t1[..len], wide);
                }
                float logZt = lseT.Value, logZs = lseS.Value, kl = 0;
                for (int o = 0; o < v; o += VocabBlock)
                {
                    int len = Math.Min(VocabBlock, v - o);
                    Span<float> lt = t1[..len], ls = t2[..len], ps = t3[..len];
                    TensorPrimitives.Subtract(zt.Slice(o, len), logZt, lt);     // ln p_T
                    TensorPrimitives.Subtract(zs.Slice(o, len), logZs, ls);     // ln p_S
                    Simd.Exp(ls, ps, wide);                                   // p_S
                    TensorPrimitives.Subtract(lt, ls, ls);                      // ln p_T − ln p_S
                    // A masked teacher logit (−∞) gives p_T = 0 and a −∞ or NaN log ratio; clamping the
                    // ratio to a finite value makes that term 0·finite = 0, as the limit p ln p → 0 says.
                    TensorPrimitives.MaxNumber(ls, float.MinValue, ls);
                    Simd.Exp(lt, lt, wide);                                   // p_T
                    kl += Simd.Dot(lt, ls, wide);
                    if (td is not null)
                    {
                        TensorPrimitives.Subtract(ps, lt, ps);
                        TensorPrimitives.Multiply(ps, gradScale, td.F.AsSpan(r * v + o, len));
                    }
                }
                tl.F[r] = kl;
            }
        });
    }
}
