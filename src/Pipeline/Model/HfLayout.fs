/// The Hugging Face tensor names and shapes of a Llama/Qwen2/Qwen3 checkpoint (modeling_llama.py,
/// modeling_qwen2.py, modeling_qwen3.py), shared by the loader and the writer so they cannot disagree.
module TaylorCalibrate.Pipeline.Model.HfLayout

open TaylorCalibrate.Pipeline

/// Name and expected shape of every tensor the config requires, in file order.
let tensorShapes (c: ModelConfig) : (string * int[]) list =
    [ yield "model.embed_tokens.weight", [| c.Vocab; c.Dim |]
      for i in 0 .. c.Layers - 1 do
          let p = $"model.layers.{i}."
          yield p + "input_layernorm.weight", [| c.Dim |]
          yield p + "self_attn.q_proj.weight", [| c.QDim; c.Dim |]
          yield p + "self_attn.k_proj.weight", [| c.KvDim; c.Dim |]
          yield p + "self_attn.v_proj.weight", [| c.KvDim; c.Dim |]
          yield p + "self_attn.o_proj.weight", [| c.Dim; c.QDim |]
          if c.QkvBias then
              yield p + "self_attn.q_proj.bias", [| c.QDim |]
              yield p + "self_attn.k_proj.bias", [| c.KvDim |]
              yield p + "self_attn.v_proj.bias", [| c.KvDim |]
          if c.OutputBias then yield p + "self_attn.o_proj.bias", [| c.Dim |]
          if c.QkNorm then
              yield p + "self_attn.q_norm.weight", [| c.HeadDim |]
              yield p + "self_attn.k_norm.weight", [| c.HeadDim |]
          yield p + "post_attention_layernorm.weight", [| c.Dim |]
          yield p + "mlp.gate_proj.weight", [| c.Hidden; c.Dim |]
          yield p + "mlp.up_proj.weight", [| c.Hidden; c.Dim |]
          yield p + "mlp.down_proj.weight", [| c.Dim; c.Hidden |]
      yield "model.norm.weight", [| c.Dim |]
      if not c.TiedEmbeddings then yield "lm_head.weight", [| c.Vocab; c.Dim |] ]

/// Builds the weights by asking `read name shape` for each tensor (the reader checks the shape);
/// stops at the first error.
let assemble (c: ModelConfig) (read: string -> int[] -> Result<float32[], InputError>) : Result<TeacherWeights, InputError> =
    let shapes = dict (tensorShapes c)
    let mutable firstError = None
    let get name =
        match firstError with
        | Some _ -> [||]
        | None ->
            match read name shapes[name] with
            | Ok a -> a
            | Error e ->
                firstError <- Some e
                [||]
    let opt flag name = if flag then Some(get name) else None
    let embedding = get "model.embed_tokens.weight"
    let layers =
        Array.init c.Layers (fun i ->
            let p = $"model.layers.{i}."
            { AttnNorm = get (p + "input_layernorm.weight")
              Wq = get (p + "self_attn.q_proj.weight")
              Wk = get (p + "self_attn.k_proj.weight")
              Wv = get (p + "self_attn.v_proj.weight")
              Wo = get (p + "self_attn.o_proj.weight")
              Bq = opt c.QkvBias (p + "self_attn.q_proj.bias")
              Bk = opt c.QkvBias (p + "self_attn.k_proj.bias")
              Bv = opt c.QkvBias (p + "self_attn.v_proj.bias")
              Bo = opt c.OutputBias (p + "self_attn.o_proj.bias")
              QNorm = opt c.QkNorm (p + "self_attn.q_norm.weight")
              KNorm = opt c.QkNorm (p + "self_attn.k_norm.weight")
              MlpNorm = get (p + "post_attention_layernorm.weight")
              Gate = get (p + "mlp.gate_proj.weight")
              Up = get (p + "mlp.up_proj.weight")
              Down = get (p + "mlp.down_proj.weight") })
    let finalNorm = get "model.norm.weight"
    let lmHead = opt (not c.TiedEmbeddings) "lm_head.weight"
    match firstError with
    | Some e -> Error e
    | None -> Ok { Embedding = embedding; Layers = layers; FinalNorm = finalNorm; LmHead = lmHead }

/// Every tensor of the weights under its Hugging Face name, in file order (the inverse of `assemble`).
let tensors (c: ModelConfig) (w: TeacherWeights) : (string * int[] * float32[]) list =
    let values = System.Collections.Generic.Dictionary<string, float32[]>()
    values["model.embed_tokens.weight"] <- w.Embedding
    w.Layers |> Array.iteri (fun i l ->
        let p = $"model.layers.{i}."
        let put n (a: float32[]) = values[p + n] <- a
        let putOpt n a = Option.iter (put n) a
        put "input_layernorm.weight" l.AttnNorm
        put "self_attn.q_proj.weight" l.Wq
        put "self_attn.k_proj.weight" l.Wk
        put "self_attn.v_proj.weight" l.Wv
        put "self_attn.o_proj.weight" l.Wo
        putOpt "self_attn.q_proj.bias" l.Bq
        putOpt "self_attn.k_proj.bias" l.Bk
        putOpt "self_attn.v_proj.bias" l.Bv
        putOpt "self_attn.o_proj.bias" l.Bo
        putOpt "self_attn.q_norm.weight" l.QNorm
        putOpt "self_attn.k_norm.weight" l.KNorm
        put "post_attention_layernorm.weight" l.MlpNorm
        put "mlp.gate_proj.weight" l.Gate
        put "mlp.up_proj.weight" l.Up
        put "mlp.down_proj.weight" l.Down)
    values["model.norm.weight"] <- w.FinalNorm
    w.LmHead |> Option.iter (fun a -> values["lm_head.weight"] <- a)
    [ for name, shape in tensorShapes c ->
        match values.TryGetValue name with
        | true, a -> name, shape, a
        | _ -> invalidArg "w" $"weights lack '{name}' that the config requires" ]
