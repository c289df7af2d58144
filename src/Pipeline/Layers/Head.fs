/// The final RMSNorm and the LM head, logits = W·RMSNorm(x), and their reverse (docs/training.md,
/// "Layers"). With tied embeddings W is the embedding table itself, so its gradient (the same Grads entry)
/// receives this contribution and the embedding's scatter-add.
namespace TaylorCalibrate.Pipeline.Layers

open TaylorCalibrate.Backend

/// Final norm weight (D) and classifier W (V, D) (the embedding when tied).
type HeadParams =
    { Norm: Tensor
      W: Tensor }

module Head =
    /// logits (B, T, V) from the last residual stream x (B, T, D).
    let forward (be: IBackend) (scratch: Scratch) (arena: Arena) (p: HeadParams) (eps: float32) (x: Tensor) (logits: Tensor) : NormSaved =
        let n = RmsNorm.forward be arena p.Norm eps x
        Linear.forward be scratch (Linear.ofWeight p.W) n.Y logits (int (x.Count / p.Norm.Count))
        n

    /// dx (B, T, D) written from dlogits (B, T, V); dW and dNorm accumulated.
    let backward (be: IBackend) (scratch: Scratch) (grads: Grads) (p: HeadParams) (s: NormSaved) (dlogits: Tensor) (dx: Tensor) =
        let rows = int (s.X.Count / p.Norm.Count)
        let dxn = scratch.Get("head.dxn", s.Y.Shape)
        Linear.backward be scratch grads (Linear.ofWeight p.W) s.Y dlogits (Some dxn) rows false
        RmsNorm.backward be scratch grads p.Norm s dxn dx
