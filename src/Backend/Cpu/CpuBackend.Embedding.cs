// Token embedding of the CPU backend (docs/kernels.md §4, "Embedding"):
//   forward   y[n, :] = table[ids[n], :]                    table (V, D), ids (N), y (N, D)
//   backward  dtable[ids[n], :] += dy[n, :]                 accumulates, deterministic
// The backward avoids atomics and races by grouping positions per id (a stable counting sort), so each
// table row is owned by one task and receives its rows of dy in increasing n: a fixed summation order.
using System.Numerics.Tensors;

namespace TaylorCalibrate.Backend.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Checks ids against a [V, D] table and a [N, D] row tensor; returns (V, D, N).</summary>
    static (int V, int D, int N) CheckEmbedding(CpuTensor table, string tableName, CpuTensor ids, CpuTensor rows, string rowsName)
    {
        Check.That(table.Rank == 2, $"tensor '{tableName}' has shape {table.ShapeText}, expected [V,D]");
        int v = table.Dim(0), d = table.Dim(1);
        int n = checked((int)ids.Count);
        if (rows.Count != (long)n * d)
            throw new ArgumentException($"tensor '{rowsName}' has shape {rows.ShapeText} ({rows.Count} elements), expected [{n},{d}] (ids {ids.ShapeText} × D of '{tableName}' {table.ShapeText})");
        for (int i = 0; i < n; i++)
            if ((uint)ids.I[i] >= (uint)v)
                throw new ArgumentException($"tensor 'ids' {ids.ShapeText} holds id {ids.I[i]} at position {i}, outside [0,{v}) of '{tableName}' {table.ShapeText}");
        return (v, d, n);
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">table is not [V,D], y is not [N,D], or an id is outside [0,V).</exception>
    public void Embedding(Tensor table, Tensor ids, Tensor y)
    {
        var (tt, ti, ty) = (F32(table, "table"), I32(ids, "ids"), F32(y, "y"));
        var (_, d, n) = CheckEmbedding(tt, "table", ti, ty, "y");
        Workers.ForRows(n, d, (first, count) =>
        {
            for (int i = first; i < first + count; i++)
                tt.F.AsSpan(ti.I[i] * d, d).CopyTo(ty.F.AsSpan(i * d, d));
        });
    }

    /// <inheritdoc />
    /// <exception cref="ArgumentException">dtable is not [V,D], dy is not [N,D], or an id is outside [0,V).</exception>
    public void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtable)
    {
        var (ti, tdy, tt) = (I32(ids, "ids"), F32(dy, "dy"), F32(dtable, "dtable"));
        var (v, d, n) = CheckEmbedding(tt, "dtable", ti, tdy, "dy");

        // Stable counting sort of positions by id: positions of id k are order[start[k] .. start[k+1]).
        var start = new int[v + 1];
        for (int i = 0; i < n; i++) start[ti.I[i] + 1]++;
        for (int k = 0; k < v; k++) start[k + 1] += start[k];
        var order = new int[n];
        var next = start[..v];
        for (int i = 0; i < n; i++) order[next[ti.I[i]]++] = i;

        // Each task owns a block of table rows, so no two tasks write the same row.
        Workers.For((v + 63) / 64, (long)n * d, block =>
        {
            for (int k = block * 64; k < Math.Min(v, block * 64 + 64); k++)
            {
                var row = tt.F.AsSpan(k * d, d);
                for (int j = start[k]; j < start[k + 1]; j++)
                    TensorPrimitives.Add(row, tdy.F.AsSpan(order[j] * d, d), row);
            }
        });
    }
}
