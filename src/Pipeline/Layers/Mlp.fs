/// The SwiGLU MLP y = W_down(silu(W_gate x) ⊙ W_up x) and its reverse (docs/training.md, "Layers").
/// Saves the two pre-activations (2F per token); the product silu(a) ⊙ b is recomputed in the backward,
/// which is exact (the same op on the same inputs).
namespace TaylorCalibrate.Pipeline.Layers

open TaylorCalibrate.Backend

/// Gate (F, D), Up (F, D), Down (D, F).
type MlpParams =
    { Gate: LinearParams
      Up: LinearParams
      Down: LinearParams }

/// What the MLP backward needs.
type MlpSaved =
    { /// (rows, D) input.
      X: Tensor
      /// (rows, F) W_gate x and W_up x.
      Gate: Tensor
      Up: Tensor }

module Mlp =
    /// y (rows, D) = MLP(x); the pre-activations go to the arena.
    let forward (be: IBackend) (scratch: Scratch) (arena: Arena) (p: MlpParams) (x: Tensor) (y: Tensor) : MlpSaved =
        let F = p.Gate.Out
        let rows = int (x.Count / int64 p.Gate.In)
        let gate = arena.Alloc(Shapes.withLast x F)
        let up = arena.Alloc(Shapes.withLast x F)
        let act = scratch.Get("mlp.act", Shapes.withLast x F)
        Linear.forward be scratch p.Gate x gate rows
        Linear.forward be scratch p.Up x up rows
        be.SwiGlu(gate, up, act)
        Linear.forward be scratch p.Down act y rows
        { X = x; Gate = gate; Up = up }

    /// dx (written) from dy; parameter gradients accumulated.
    let backward (be: IBackend) (scratch: Scratch) (grads: Grads) (p: MlpParams) (s: MlpSaved) (dy: Tensor) (dx: Tensor) =
        let rows = int (s.X.Count / int64 p.Gate.In)
        let shape = s.Gate.Shape
        let act = scratch.Get("mlp.act", shape)
        let dact = scratch.Get("mlp.dact", shape)
        let dgate = scratch.Get("mlp.dgate", shape)
        let dup = scratch.Get("mlp.dup", shape)
        be.SwiGlu(s.Gate, s.Up, act)
        Linear.backward be scratch grads p.Down act dy (Some dact) rows false
        be.SwiGluBackward(s.Gate, s.Up, dact, dgate, dup)
        Linear.backward be scratch grads p.Gate s.X dgate (Some dx) rows false
        Linear.backward be scratch grads p.Up s.X dup (Some dx) rows true
