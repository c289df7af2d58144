// Row normalisations and rotary embedding of the CPU backend (docs/kernels.md §4):
//   RMSNorm  y = w ⊙ x·r, r = (mean x² + eps)^−½;  with g = w ⊙ dy:  dx = r·g − x·r³·mean(g ⊙ x),
//            dw += Σ_rows dy ⊙ x·r
//   L2 norm  y = x·rstd, rstd = (Σx² + eps)^−½;  dx = rstd·(dy − (dy·y)·y)
//   RoPE     rotate pairs (x_a, x_b) of each head vector by the angle of pair i at position t:
//            (x_a·cos − x_b·sin, x_a·sin + x_b·cos); inverse (the backward) uses −sin.
// Rows are independent and run in parallel blocks; per-row dot products use the fixed-order Simd helpers.
// RMSNorm's dw sums over rows through at most 32 row groups fixed by the shape, added in group order, so
// the result is deterministic and independent of the thread count.
using System.Numerics.Tensors;

namespace TaylorCalibrate.Backend.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Throws unless <paramref name="t"/> holds one value per row of <paramref name="of"/>.</summary>
    static void CheckPerRow(CpuTensor t, string name, int rows, CpuTensor of, string ofName)
    {
        if (t.Count != rows)
            throw new ArgumentException($"tensor '{name}' has shape {t.ShapeText} ({t.Count} elements), expected {rows} (one per row of '{ofName}' {of.ShapeText})");
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">x is not made of rows of w.Count; y or rstd sizes differ.</exception>
    public void RmsNorm(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps)
    {
        var (tx, ty) = SameSize(x, "x", y, "y");
        var tw = F32(w, "w");
        var tr = F32(rstd, "rstd");
        int cols = checked((int)tw.Count);
        int rows = Check.Rows(tx, "x", cols);
        CheckPerRow(tr, "rstd", rows, tx, "x");
        bool wide = Wide;
        Workers.ForRows(rows, cols, (first, count) =>
        {
            for (int row = first; row < first + count; row++)
            {
                var xr = tx.F.AsSpan(row * cols, cols);
                var yr = ty.F.AsSpan(row * cols, cols);
                float r = 1f / MathF.Sqrt(Simd.SumOfSquares(xr, wide) / cols + eps);
                tr.F[row] = r;
                TensorPrimitives.Multiply(xr, r, yr);
                TensorPrimitives.Multiply(yr, tw.F, yr);
            }
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">Sizes of dy, x, dx, rstd or dw do not match x's rows of w.Count.</exception>
    public void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dw)
    {
        var (tx, tdy, tdx) = SameSize(x, "x", dy, "dy", dx, "dx");
        var (tw, tdw) = SameSize(w, "w", dw, "dw");
        var tr = F32(rstd, "rstd");
        int cols = checked((int)tw.Count);
        int rows = Check.Rows(tx, "x", cols);
        CheckPerRow(tr, "rstd", rows, tx, "x");

        // Row groups: fixed by the shape (about 16K elements each, at most 32), each with its own dw partial.
        int groups = (int)Math.Clamp((long)rows * cols / CpuParallel.ElementChunk, 1, 32);
        int perGroup = (rows + groups - 1) / groups;
        groups = Math.Max(1, (rows + perGroup - 1) / perGroup);
        var partial = new float[groups * cols];
        bool wide = Wide;
        Workers.For(groups, (long)rows * cols, gi =>
        {
            var g = new float[cols];                                          // w ⊙ dy of one row
            var p = new float[cols];                                          // dy ⊙ x of one row
            var pdw = partial.AsSpan(gi * cols, cols);
            for (int row = gi * perGroup; row < Math.Min(rows, (gi + 1) * perGroup); row++)
            {
                var xr = tx.F.AsSpan(row * cols, cols);
                var dyr = tdy.F.AsSpan(row * cols, cols);
                float r = tr.F[row];
                TensorPrimitives.Multiply(tw.F, dyr, g);
                float mean = Simd.Dot(g, xr, wide) / cols;
                // dw partial += dy ⊙ x·r  (before dx is written: dx may alias dy)
                TensorPrimitives.Multiply(dyr, xr, p);
                TensorPrimitives.MultiplyAdd(p, r, pdw, pdw);
                // dx = r·g − x·(r³·mean)
                TensorPrimitives.Multiply(g, r, g);
                TensorPrimitives.MultiplyAdd(xr, -(r * r * r * mean), g, tdx.F.AsSpan(row * cols, cols));
            }
        });
        var dwv = tdw.F.AsSpan();
        for (int gi = 0; gi < groups; gi++) TensorPrimitives.Add(dwv, partial.AsSpan(gi * cols, cols), dwv);
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">x is not made of rows of <paramref name="cols"/>; y or rstd sizes differ.</exception>
    public void L2Norm(Tensor x, Tensor y, Tensor rstd, int cols, float eps)
    {
        var (tx, ty) = SameSize(x, "x", y, "y");
        var tr = F32(rstd, "rstd");
        int rows = Check.Rows(tx, "x", cols);
        CheckPerRow(tr, "rstd", rows, tx, "x");
        bool wide = Wide;
        Workers.ForRows(rows, cols, (first, count) =>
        {
            for (int row = first; row < first + count; row++)
            {
                var xr = tx.F.AsSpan(row * cols, cols);
                float r = 1f / MathF.Sqrt(Simd.SumOfSquares(xr, wide) + eps);
                tr.F[row] = r;
                TensorPrimitives.Multiply(xr, r, ty.F.AsSpan(row * cols, cols));
            }
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">Sizes of dy, y, dx or rstd do not match.</exception>
    public void L2NormBackward(Tensor dy, Tensor y, Tensor rstd, Tensor dx, int cols)
    {
        var (ty, tdy, tdx) = SameSize(y, "y", dy, "dy", dx, "dx");
        var tr = F32(rstd, "rstd");
        int rows = Check.Rows(ty, "y", cols);
        CheckPerRow(tr, "rstd", rows, ty, "y");
        bool wide = Wide;
        Workers.ForRows(rows, cols, (first, count) =>
        {
            for (int row = first; row < first + count; row++)
            {
                var yr = ty.F.AsSpan(row * cols, cols);
                var dyr = tdy.F.AsSpan(row * cols, cols);
                var dxr = tdx.F.AsSpan(row * cols, cols);
                float d = Simd.Dot(dyr, yr, wide);
                TensorPrimitives.MultiplyAdd(yr, -d, dyr, dxr);                // dy − (dy·y)·y
                TensorPrimitives.Multiply(dxr, tr.F[row], dxr);
            }
        });
    }

    /// <inheritdoc />
    /// <remarks>x is [B,T,H,D] (any leading dimensions fold into B); D must be even.</remarks>
    /// <exception cref="ArgumentException">x has rank &lt; 3 or odd D; cos/sin are not [T, D/2]; y's size differs.</exception>
    public void Rope(Tensor x, Tensor cos, Tensor sin, Tensor y, RopeLayout layout, bool inverse)
    {
        var (tx, ty) = SameSize(x, "x", y, "y");
        var (tc, ts) = (F32(cos, "cos"), F32(sin, "sin"));
        Check.That(tx.Rank >= 3, $"rope: tensor 'x' has shape {tx.ShapeText}, expected [B,T,H,D]");
        int t = tx.Dim(-3), h = tx.Dim(-2), d = tx.Dim(-1), half = d / 2;
        Check.That(d % 2 == 0, $"rope: tensor 'x' {tx.ShapeText} has an odd head dimension {d}");
        Check.Shape(tc, "cos", t, half);
        Check.Shape(ts, "sin", t, half);
        Check.That(layout is RopeLayout.HalfSplit or RopeLayout.Adjacent, $"rope: unknown layout {layout}");
        if (tx.Count == 0) return;
        float sign = inverse ? -1f : 1f;
        int positions = checked((int)(tx.Count / ((long)h * d)));                // B·T rows of H·D
        Workers.ForRows(positions, h * d, (first, count) =>
        {
            for (int bt = first; bt < first + count; bt++)
            {
                var cs = tc.F.AsSpan(bt % t * half, half);
                var sn = ts.F.AsSpan(bt % t * half, half);
                for (int head = 0; head < h; head++)
                {
                    int o = (bt * h + head) * d;
                    for (int i = 0; i < half; i++)
                    {
                        // HalfSplit pairs (i, i + D/2) (Hugging Face); Adjacent pairs (2i, 2i + 1) (llama2.c).
                        int ia = layout == RopeLayout.HalfSplit ? o + i : o + 2 * i;
                        int ib = layout == RopeLayout.HalfSplit ? o + i + half : o + 2 * i + 1;
                        float xa = tx.F[ia], xb = tx.F[ib], c = cs[i], s = sign * sn[i];
                        ty.F[ia] = xa * c - xb * s;
                        ty.F[ib] = xa * s + xb * c;
                    }
                }
            }
        });
    }
}
