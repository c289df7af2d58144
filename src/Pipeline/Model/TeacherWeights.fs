/// The weights of a teacher in memory: fp32, row-major [out, in] (the Hugging Face and llama2.c storage),
/// whatever dtype the file held. One layout for every family; optional tensors are options.
namespace TaylorCalibrate.Pipeline.Model

/// One decoder layer. Shapes with D = Dim, F = Hidden, Q = Heads·HeadDim, K = KvHeads·HeadDim.
type LayerWeights =
    { /// (D) RMSNorm before attention.
      AttnNorm: float32[]
      /// (Q, D)
      Wq: float32[]
      /// (K, D)
      Wk: float32[]
      /// (K, D)
      Wv: float32[]
      /// (D, Q)
      Wo: float32[]
      /// (Q), (K), (K) when QkvBias.
      Bq: float32[] option
      Bk: float32[] option
      Bv: float32[] option
      /// (D) when OutputBias.
      Bo: float32[] option
      /// (HeadDim) each, when QkNorm.
      QNorm: float32[] option
      KNorm: float32[] option
      /// (D) RMSNorm before the MLP.
      MlpNorm: float32[]
      /// (F, D) gate (llama2.c w1), (F, D) up (w3), (D, F) down (w2).
      Gate: float32[]
      Up: float32[]
      Down: float32[] }

/// Every weight of a teacher.
type TeacherWeights =
    { /// (V, D)
      Embedding: float32[]
      Layers: LayerWeights[]
      /// (D)
      FinalNorm: float32[]
      /// (V, D); None when tied to the embedding.
      LmHead: float32[] option }

/// Where a teacher came from, for `inspect` and error messages.
type TeacherSource =
    { Path: string
      /// "huggingface" or "llama2.c".
      Format: string
      /// Storage dtypes with their tensor counts, e.g. ["BF16 x 291"].
      DTypes: string list }

/// A loaded teacher: its shape, weights and origin.
type Teacher =
    { Config: ModelConfig
      Weights: TeacherWeights
      Source: TeacherSource }

module TeacherWeights =
    /// The classifier matrix (V, D): lm_head, or the embedding when tied.
    let lmHead (w: TeacherWeights) = defaultArg w.LmHead w.Embedding

    /// Number of parameters (a tied lm_head counted once).
    let parameterCount (w: TeacherWeights) =
        let n (a: float32[]) = int64 a.Length
        let opt = Option.map n >> Option.defaultValue 0L
        let layer (l: LayerWeights) =
            n l.AttnNorm + n l.Wq + n l.Wk + n l.Wv + n l.Wo + opt l.Bq + opt l.Bk + opt l.Bv + opt l.Bo
            + opt l.QNorm + opt l.KNorm + n l.MlpNorm + n l.Gate + n l.Up + n l.Down
        n w.Embedding + (w.Layers |> Array.sumBy layer) + n w.FinalNorm + opt w.LmHead

    /// Every tensor with a name in forward order (Hugging Face names; llama2.c files hold the same tensors).
    let named (w: TeacherWeights) : (string * float32[]) list =
        let layer i (l: LayerWeights) =
            let p n = $"model.layers.{i}.{n}"
            [ p "input_layernorm.weight", Some l.AttnNorm
              p "self_attn.q_proj.weight", Some l.Wq; p "self_attn.k_proj.weight", Some l.Wk; p "self_attn.v_proj.weight", Some l.Wv
              p "self_attn.q_proj.bias", l.Bq; p "self_attn.k_proj.bias", l.Bk; p "self_attn.v_proj.bias", l.Bv
              p "self_attn.q_norm.weight", l.QNorm; p "self_attn.k_norm.weight", l.KNorm
              p "self_attn.o_proj.weight", Some l.Wo; p "self_attn.o_proj.bias", l.Bo
              p "post_attention_layernorm.weight", Some l.MlpNorm
              p "mlp.gate_proj.weight", Some l.Gate; p "mlp.up_proj.weight", Some l.Up; p "mlp.down_proj.weight", Some l.Down ]
            |> List.choose (fun (n, a) -> a |> Option.map (fun a -> n, a))
        [ yield "model.embed_tokens.weight", w.Embedding
          for i in 0 .. w.Layers.Length - 1 do yield! layer i w.Layers[i]
          yield "model.norm.weight", w.FinalNorm
          match w.LmHead with Some h -> yield "lm_head.weight", h | None -> () ]

    /// The first tensor (in forward order) holding a NaN or ±Inf, with the flat index of the first such value:
    /// where a non-finite forward pass would begin.
    let firstNonFinite (w: TeacherWeights) : (string * int * float32) option =
        named w |> List.tryPick (fun (n, a) ->
            a |> Array.tryFindIndex (fun v -> not (System.Single.IsFinite v)) |> Option.map (fun i -> n, i, a[i]))
