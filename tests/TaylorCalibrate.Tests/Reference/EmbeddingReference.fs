/// Naive double-precision reference of IBackend.Embedding and EmbeddingBackward: a gather of table rows
/// (table (V, D), ids (N), y (N, D)) and its reverse, a scatter-add into dtable. Maths: docs/kernels.md §4.
module TaylorCalibrate.Tests.Reference.Embedding

/// y[n,:] = table[ids[n],:]; rows of D = `dim`.
let gather (table: float[]) (dim: int) (ids: int[]) =
    Array.init (ids.Length * dim) (fun i -> table[ids[i / dim] * dim + i % dim])

/// dtable after dtable[ids[n],:] += dy[n,:] (accumulates into a copy of `dtable`).
let scatterAdd (ids: int[]) (dy: float[]) (dim: int) (dtable: float[]) =
    let out = Array.copy dtable
    ids |> Array.iteri (fun n id ->
        for j in 0 .. dim - 1 do
            out[id * dim + j] <- out[id * dim + j] + dy[n * dim + j])
    out
