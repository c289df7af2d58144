/// RMSNorm over the last dimension and its reverse (docs/training.md, "Layers"): y = w ⊙ x·r with
/// r = (mean x² + eps)^−½ per row; the backend's RmsNormBackward gives dx and accumulates dw.
namespace TaylorCalibrate.Pipeline.Layers

open TaylorCalibrate.Backend

/// What the backward of one RMSNorm needs: its input, output and per-row r.
type NormSaved =
    { /// Input (rows, C); owned by whoever produced it (kept alive as long as this record).
      X: Tensor
      /// Output (rows, C), in the arena.
      Y: Tensor
      /// (rows) reciprocal RMS.
      Rstd: Tensor }

module RmsNorm =
    /// y = RMSNorm(x)·w into arena tensors.
    let forward (be: IBackend) (arena: Arena) (w: Tensor) (eps: float32) (x: Tensor) : NormSaved =
        let y = arena.Alloc x.Shape
        let rstd = arena.Alloc [| int (x.Count / w.Count) |]
        be.RmsNorm(x, w, y, rstd, eps)
        { X = x; Y = y; Rstd = rstd }

    /// The weight gradient tensor of w, or a zeroed scratch sink when w is frozen (the backend always
    /// writes one).
    let weightGradOrSink (be: IBackend) (scratch: Scratch) (grads: Grads) (w: Tensor) =
        match grads.Of w with
        | Some g -> g
        | None ->
            let sink = scratch.Get($"norm.frozen-dw.{w.Count}", w.Shape)
            be.Fill(sink, 0f)
            sink

    /// dx (written) from dy, given the forward's input x and r; dw accumulated when w is trained.
    let backwardOf (be: IBackend) (scratch: Scratch) (grads: Grads) (w: Tensor) (x: Tensor) (rstd: Tensor) (dy: Tensor) (dx: Tensor) =
        be.RmsNormBackward(dy, x, w, rstd, dx, weightGradOrSink be scratch grads w)

    /// dx (written) from dy; dw accumulated when w is trained.
    let backward (be: IBackend) (scratch: Scratch) (grads: Grads) (w: Tensor) (s: NormSaved) (dy: Tensor) (dx: Tensor) =
        backwardOf be scratch grads w s.X s.Rstd dy dx
