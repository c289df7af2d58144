/// The shape of a teacher: one record for every supported family (Llama, Qwen2/2.5, Qwen3, llama2.c), read
/// from a Hugging Face config.json or a llama2.c header. Family differences are flags, not subtypes:
/// q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3), tied lm_head, RoPE pairing and Llama-3 scaling.
namespace TaylorCalibrate.Pipeline.Model

open TaylorCalibrate.Backend

/// The architecture family of a decoder-only teacher.
[<RequireQualifiedAccess>]
type ModelFamily =
    | Llama
    | Qwen2
    | Qwen3

module ModelFamily =
    /// The Hugging Face model_type of each family.
    let modelType =
        function
        | ModelFamily.Llama -> "llama"
        | ModelFamily.Qwen2 -> "qwen2"
        | ModelFamily.Qwen3 -> "qwen3"

    /// Every supported model_type, for error messages.
    let supported = [ "llama"; "qwen2"; "qwen3" ]

    let ofModelType (s: string) =
        match s with
        | "llama" -> Some ModelFamily.Llama
        | "qwen2" -> Some ModelFamily.Qwen2
        | "qwen3" -> Some ModelFamily.Qwen3
        | _ -> None

/// Dimensions and options of a Llama-style decoder (pre-norm, GQA attention with RoPE, SwiGLU MLP).
/// Query head h reads KV head h / (Heads / KvHeads). HeadDim need not be Dim / Heads.
type ModelConfig =
    { Family: ModelFamily
      /// Hidden size D.
      Dim: int
      /// SwiGLU width (intermediate_size).
      Hidden: int
      Layers: int
      Heads: int
      KvHeads: int
      HeadDim: int
      Vocab: int
      /// Context length (max_position_embeddings, llama2.c seq_len).
      Context: int
      NormEps: float
      RopeTheta: float
      RopeScaling: Llama3RopeScaling option
      RopeLayout: RopeLayout
      /// lm_head shares the embedding matrix.
      TiedEmbeddings: bool
      /// q_proj, k_proj, v_proj carry biases (always on Qwen2).
      QkvBias: bool
      /// o_proj carries a bias (attention_bias on Llama/Qwen3).
      OutputBias: bool
      /// Per-head RMSNorm of q and k before RoPE (Qwen3).
      QkNorm: bool }

    /// Width of the concatenated query heads, Heads·HeadDim.
    member c.QDim = c.Heads * c.HeadDim
    /// Width of the concatenated key (or value) heads, KvHeads·HeadDim.
    member c.KvDim = c.KvHeads * c.HeadDim
    /// Softmax scale 1/√HeadDim.
    member c.AttentionScale = 1.0 / sqrt (float c.HeadDim)
