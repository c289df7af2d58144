/// Token embedding y[n] = E[ids[n]] and its reverse, a deterministic scatter-add into dE
/// (docs/training.md, "Layers"). A tied LM head writes into the same gradient (Head.fs), so dE holds both
/// contributions.
module TaylorCalibrate.Pipeline.Layers.Embedding

open TaylorCalibrate.Backend

/// y (N, D) = table (V, D) rows at ids (N, int).
let forward (be: IBackend) (table: Tensor) (ids: Tensor) (y: Tensor) = be.Embedding(table, ids, y)

/// dtable += scatter of dy (N, D) at ids, when the table is trained.
let backward (be: IBackend) (grads: Grads) (table: Tensor) (ids: Tensor) (dy: Tensor) =
    grads.Of table |> Option.iter (fun dt -> be.EmbeddingBackward(ids, dy, dt))
