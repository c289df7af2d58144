/// The shape of a teacher trained from scratch (`train-teacher`) and its initial weights. A shape becomes a
/// ModelConfig of its family — Llama (no biases), Qwen2 (q/k/v biases), Qwen3 (per-head q/k RMSNorm) —
/// with Hugging Face conventions (half-split RoPE pairing), so the trained model is an ordinary Hugging Face
/// directory that every command (and an HF-style PyTorch forward) reads.
/// Initial weights: every matrix N(0, 0.02²), the two projections that write into the residual stream
/// (o_proj, down_proj) scaled by 1/√(2L) so the residual's variance does not grow with depth (GPT-2's
/// rule); norms 1; biases 0. Drawn from one seeded generator in a fixed tensor order, so a seed fixes them.
module TaylorCalibrate.Pipeline.Stages.TeacherShape

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Training

/// What `train-teacher --family ... --layers ... --hidden ...` asks for.
type TeacherShape =
    { Family: ModelFamily
      Layers: int
      /// Hidden size D.
      Hidden: int
      Heads: int
      KvHeads: int
      HeadDim: int
      /// SwiGLU width.
      Ffn: int
      /// From the tokenizer.
      Vocab: int
      /// Longest sequence the model is meant for (max_position_embeddings).
      Context: int
      /// lm_head shares the embedding matrix.
      Tied: bool }

/// Standard deviation of every fresh matrix.
let initStd = 0.02

/// The family's RMSNorm epsilon (Llama's 1e-5, Qwen's 1e-6) and RoPE base.
let private familyDefaults (f: ModelFamily) =
    match f with
    | ModelFamily.Llama -> 1e-5, 10000.0
    | ModelFamily.Qwen2 | ModelFamily.Qwen3 -> 1e-6, 10000.0

/// The configuration of a shape, or the first option that is inconsistent (named as its CLI option).
let toConfig (s: TeacherShape) : Result<ModelConfig, InputError> =
    let bad option why = Error(InvalidOption(option, why))
    if s.Layers < 1 then bad "--layers" $"must be at least 1, not {s.Layers}"
    elif s.Hidden < 1 then bad "--hidden" $"must be at least 1, not {s.Hidden}"
    elif s.Heads < 1 then bad "--heads" $"must be at least 1, not {s.Heads}"
    elif s.Hidden % s.Heads <> 0 then bad "--heads" $"{s.Heads} heads do not divide --hidden {s.Hidden}"
    elif s.KvHeads < 1 then bad "--kv-heads" $"must be at least 1, not {s.KvHeads}"
    elif s.Heads % s.KvHeads <> 0 then bad "--kv-heads" $"{s.KvHeads} kv heads do not divide --heads {s.Heads}"
    elif s.HeadDim < 2 || s.HeadDim % 2 <> 0 then bad "--head-dim" $"must be even and at least 2 (RoPE rotates pairs), not {s.HeadDim}"
    elif s.Ffn < 1 then bad "--ffn" $"must be at least 1, not {s.Ffn}"
    elif s.Vocab < 2 then bad "--tokenizer" $"a vocabulary of {s.Vocab} tokens is too small to train on"
    elif s.Context < 2 then bad "--seq-len" $"must be at least 2, not {s.Context}"
    else
        let eps, theta = familyDefaults s.Family
        Ok { Family = s.Family; Dim = s.Hidden; Hidden = s.Ffn; Layers = s.Layers; Heads = s.Heads; KvHeads = s.KvHeads
             HeadDim = s.HeadDim; Vocab = s.Vocab; Context = s.Context; NormEps = eps; RopeTheta = theta; RopeScaling = None
             RopeLayout = RopeLayout.HalfSplit; TiedEmbeddings = s.Tied
             QkvBias = (s.Family = ModelFamily.Qwen2); OutputBias = false; QkNorm = (s.Family = ModelFamily.Qwen3) }

/// Whether a tensor writes into the residual stream (its init is scaled down with depth).
let private writesResidual (name: string) = name.EndsWith "o_proj.weight" || name.EndsWith "down_proj.weight"

/// Fresh weights for `c`, determined by `seed`.
let initialWeights (seed: uint64) (c: ModelConfig) : TeacherWeights =
    let rng = Rng.ForPurpose(seed, "teacher-init")
    let residualStd = initStd / sqrt (2.0 * float c.Layers)
    HfLayout.assemble c (fun name shape ->
        let n = Array.fold (*) 1 shape
        if name.EndsWith "norm.weight" then Ok(Array.create n 1f)
        elif name.EndsWith ".bias" then Ok(Array.zeroCreate n)
        else Ok(rng.Normals(n, (if writesResidual name then residualStd else initStd))))
    |> Result.defaultWith (fun e -> invalidOp $"fresh weights do not fit their own layout: {InputError.describe e}")
