/// A trainable tensor as every training loop sees it: its reference name, its value and its gradient on
/// one backend. Layers create parameters (Layers/, Decoder), optimisers and checkpoints consume them
/// (Training/). The name is the one the model's files use (StudentIo, HfWriter), so parameter groups,
/// checkpoints and saved models all agree on what a tensor is called.
namespace TaylorCalibrate.Pipeline.Training

open TaylorCalibrate.Backend

/// A trainable tensor. Backward passes ACCUMULATE into Grad (IBackend's convention), so a training step
/// zeroes every Grad once before its first micro-batch.
type Parameter =
    { /// Reference name, e.g. "model.layers.3.attn.q_proj.weight".
      Name: string
      /// The value (same shape as the saved tensor).
      Value: Tensor
      /// The gradient, same shape as Value.
      Grad: Tensor }
