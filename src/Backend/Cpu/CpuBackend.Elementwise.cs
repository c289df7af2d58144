// Elementwise ops of the CPU backend (docs/kernels.md §4, "Elementwise"):
//   y = a + b, y = a ⊙ b, y = s·x, y += s·x;  y = f(x) and dx = dy ⊙ f′(x) for
//   SiLU x·σ(x) (f′ = σ(1 + x(1 − σ))), sigmoid (f′ = σ(1 − σ)), softplus max(x,0) + log1p(e^−|x|) (f′ = σ),
//   exp (f′ = e^x), log (f′ = 1/x);  SwiGLU y = silu(a) ⊙ b, da = dy ⊙ b ⊙ silu′(a), db = dy ⊙ silu(a).
// Vector loops are TensorPrimitives calls on blocks of 1024 elements (L1-resident temporaries on the
// stack); tensors above ~32K elements are cut into fixed chunks that run in parallel. Every output is
// written after all reads of the same block, so outputs may alias inputs (y = x, da = a, ...).
using System.Numerics.Tensors;

namespace TaylorCalibrate.Backend.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Elements per inner block: two float temporaries of this size live on the stack.</summary>
    const int ElementBlock = 1024;

    /// <summary>Body of a block loop: elements [start, start + length) with two scratch spans of that length.</summary>
    delegate void BlockBody(int start, int length, Span<float> t1, Span<float> t2);

    /// <summary>Runs body over [0, n) in blocks of <see cref="ElementBlock"/>, chunks in parallel.</summary>
    void ForBlocks(long n, BlockBody body) => Workers.ForChunks(n, (start, length) =>
    {
        Span<float> t1 = stackalloc float[ElementBlock];
        Span<float> t2 = stackalloc float[ElementBlock];
        for (int o = 0; o < length; o += ElementBlock)
        {
            int m = Math.Min(ElementBlock, length - o);
            body(start + o, m, t1[..m], t2[..m]);
        }
    });

    (CpuTensor, CpuTensor) SameSize(Tensor x, string nx, Tensor y, string ny)
    {
        var (cx, cy) = (F32(x, nx), F32(y, ny));
        Check.SameCount(cx, nx, cy, ny);
        return (cx, cy);
    }

    (CpuTensor, CpuTensor, CpuTensor) SameSize(Tensor x, string nx, Tensor y, string ny, Tensor z, string nz)
    {
        var (cx, cy) = SameSize(x, nx, y, ny);
        var cz = F32(z, nz);
        Check.SameCount(cx, nx, cz, nz);
        return (cx, cy, cz);
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The element counts differ.</exception>
    public void Add(Tensor a, Tensor b, Tensor y)
    {
        var (ta, tb, ty) = SameSize(a, "a", b, "b", y, "y");
        Workers.ForChunks(ty.Count, (s, n) => TensorPrimitives.Add(ta.F.AsSpan(s, n), tb.F.AsSpan(s, n), ty.F.AsSpan(s, n)));
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The element counts differ.</exception>
    public void Mul(Tensor a, Tensor b, Tensor y)
    {
        var (ta, tb, ty) = SameSize(a, "a", b, "b", y, "y");
        Workers.ForChunks(ty.Count, (s, n) => TensorPrimitives.Multiply(ta.F.AsSpan(s, n), tb.F.AsSpan(s, n), ty.F.AsSpan(s, n)));
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The element counts differ.</exception>
    public void Scale(Tensor x, float s, Tensor y)
    {
        var (tx, ty) = SameSize(x, "x", y, "y");
        Workers.ForChunks(ty.Count, (o, n) => TensorPrimitives.Multiply(tx.F.AsSpan(o, n), s, ty.F.AsSpan(o, n)));
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The element counts differ.</exception>
    public void Axpy(float s, Tensor x, Tensor y)
    {
        var (tx, ty) = SameSize(x, "x", y, "y");
        Workers.ForChunks(ty.Count, (o, n) =>
        {
            var dst = ty.F.AsSpan(o, n);
            TensorPrimitives.MultiplyAdd(tx.F.AsSpan(o, n), s, dst, dst);
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The element counts differ or the op is unknown.</exception>
    public void Unary(UnaryOp op, Tensor x, Tensor y)
    {
        var (tx, ty) = SameSize(x, "x", y, "y");
        ForBlocks(ty.Count, (s, n, t1, _) =>
        {
            var xs = tx.F.AsSpan(s, n);
            var ys = ty.F.AsSpan(s, n);
            switch (op)
            {
                case UnaryOp.Silu:
                    Simd.Sigmoid(xs, t1, Wide);
                    TensorPrimitives.Multiply(xs, t1, ys);
                    break;
                case UnaryOp.Sigmoid: Simd.Sigmoid(xs, ys, Wide); break;
                case UnaryOp.Softplus:
                    for (int i = 0; i < n; i++) ys[i] = Softplus(xs[i]);
                    break;
                case UnaryOp.Exp: Simd.Exp(xs, ys, Wide); break;
                case UnaryOp.Log: TensorPrimitives.Log(xs, ys); break;
                default: throw new ArgumentException($"unknown unary op {op}");
            }
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The element counts differ or the op is unknown.</exception>
    public void UnaryBackward(UnaryOp op, Tensor x, Tensor dy, Tensor dx)
    {
        var (tx, tdy, tdx) = SameSize(x, "x", dy, "dy", dx, "dx");
        ForBlocks(tdx.Count, (s, n, t1, t2) =>
        {
            var xs = tx.F.AsSpan(s, n);
            var dys = tdy.F.AsSpan(s, n);
            var dxs = tdx.F.AsSpan(s, n);
            switch (op)
            {
                case UnaryOp.Silu:
                    Simd.Sigmoid(xs, t1, Wide);
                    SiluDerivative(xs, t1, t2);
                    TensorPrimitives.Multiply(dys, t2, dxs);
                    break;
                case UnaryOp.Sigmoid:                                 // σ(1 − σ)
                    Simd.Sigmoid(xs, t1, Wide);
                    TensorPrimitives.Subtract(1f, t1, t2);
                    TensorPrimitives.Multiply(t1, t2, t2);
                    TensorPrimitives.Multiply(dys, t2, dxs);
                    break;
                case UnaryOp.Softplus:                                // σ
                    Simd.Sigmoid(xs, t1, Wide);
                    TensorPrimitives.Multiply(dys, t1, dxs);
                    break;
                case UnaryOp.Exp:
                    Simd.Exp(xs, t1, Wide);
                    TensorPrimitives.Multiply(dys, t1, dxs);
                    break;
                case UnaryOp.Log:                                     // 1/x
                    TensorPrimitives.Divide(dys, xs, dxs);
                    break;
                default: throw new ArgumentException($"unknown unary op {op}");
            }
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The element counts differ.</exception>
    public void SwiGlu(Tensor a, Tensor b, Tensor y)
    {
        var (ta, tb, ty) = SameSize(a, "a", b, "b", y, "y");
        ForBlocks(ty.Count, (s, n, t1, _) =>
        {
            var av = ta.F.AsSpan(s, n);
            Simd.Sigmoid(av, t1, Wide);
            TensorPrimitives.Multiply(av, t1, t1);                    // silu(a)
            TensorPrimitives.Multiply(t1, tb.F.AsSpan(s, n), ty.F.AsSpan(s, n));
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">The element counts differ.</exception>
    public void SwiGluBackward(Tensor a, Tensor b, Tensor dy, Tensor da, Tensor db)
    {
        var (ta, tb, tdy) = SameSize(a, "a", b, "b", dy, "dy");
        var (_, tda, tdb) = SameSize(a, "a", da, "da", db, "db");
        ForBlocks(ta.Count, (s, n, t1, t2) =>
        {
            var av = ta.F.AsSpan(s, n);
            var bv = tb.F.AsSpan(s, n);
            var dyv = tdy.F.AsSpan(s, n);
            Simd.Sigmoid(av, t1, Wide);                         // t1 = σ(a)
            SiluDerivative(av, t1, t2);                               // t2 = silu′(a)
            TensorPrimitives.Multiply(t2, dyv, t2);
            TensorPrimitives.Multiply(t2, bv, t2);                    // t2 = da
            TensorPrimitives.Multiply(av, t1, t1);
            TensorPrimitives.Multiply(t1, dyv, t1);                   // t1 = db
            // Written only now, so da and db may alias a, b or dy.
            t2.CopyTo(tda.F.AsSpan(s, n));
            t1.CopyTo(tdb.F.AsSpan(s, n));
        });
    }

    /// <summary>d = silu′(x) = σ·(1 + x·(1 − σ)) given sig = σ(x); d must not alias x or sig.</summary>
    static void SiluDerivative(ReadOnlySpan<float> x, ReadOnlySpan<float> sig, Span<float> d)
    {
        TensorPrimitives.Subtract(1f, sig, d);
        TensorPrimitives.Multiply(x, d, d);
        TensorPrimitives.Add(d, 1f, d);
        TensorPrimitives.Multiply(sig, d, d);
    }

    /// <summary>softplus(x) = max(x, 0) + log1p(e^−|x|), in double so tiny results keep their digits.</summary>
    static float Softplus(float x)
    {
        double u = Math.Exp(-Math.Abs((double)x));                   // in (0, 1]
        double w = 1 + u;
        double log1p = w == 1 ? u : Math.Log(w) * u / (w - 1);      // exact-rounding trick for log(1 + u)
        return (float)(Math.Max(x, 0) + log1p);
    }
}
