/// Reads and writes the Hugging Face config.json of Llama, Qwen2 and Qwen3 models. Defaults follow the
/// transformers configuration classes (num_key_value_heads = heads, head_dim = hidden/heads, rope_theta
/// 10000, tie_word_embeddings false); the fields every family needs are required.
module TaylorCalibrate.Pipeline.Model.HfConfig

open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline

let private tryProp (o: JsonElement) (name: string) =
    let mutable v = Unchecked.defaultof<JsonElement>
    if o.TryGetProperty(name, &v) && v.ValueKind <> JsonValueKind.Null then Some v else None

/// Parses a config.json document; `path` names the file in errors.
let parse (path: string) (root: JsonElement) : Result<ModelConfig, InputError> =
    let fail field why = Error(InvalidConfigField(path, field, why))
    let intField name (dflt: int option) =
        match tryProp root name, dflt with
        | Some v, _ ->
            let mutable x = 0
            if v.ValueKind = JsonValueKind.Number && v.TryGetInt32(&x) && x > 0 then Ok x
            else fail name $"must be a positive integer, got {v.GetRawText()}"
        | None, Some d -> Ok d
        | None, None -> Error(MissingConfigField(path, name))
    let floatField name (dflt: float) =
        match tryProp root name with
        | Some v when v.ValueKind = JsonValueKind.Number && v.GetDouble() > 0.0 -> Ok(v.GetDouble())
        | Some v -> fail name $"must be a positive number, got {v.GetRawText()}"
        | None -> Ok dflt
    let boolField name dflt =
        match tryProp root name with
        | Some v when v.ValueKind = JsonValueKind.True -> Ok true
        | Some v when v.ValueKind = JsonValueKind.False -> Ok false
        | Some v -> fail name $"must be true or false, got {v.GetRawText()}"
        | None -> Ok dflt
    let ropeScaling () =
        match tryProp root "rope_scaling" with
        | None -> Ok None
        | Some s when s.ValueKind <> JsonValueKind.Object -> fail "rope_scaling" "must be an object or null"
        | Some s ->
            let kind =
                match tryProp s "rope_type", tryProp s "type" with
                | Some t, _ | None, Some t when t.ValueKind = JsonValueKind.String -> t.GetString()
                | _ -> ""
            let num name =
                match tryProp s name with
                | Some v when v.ValueKind = JsonValueKind.Number -> Ok(v.GetDouble())
                | _ -> Error(MissingConfigField(path, "rope_scaling." + name))
            match kind with
            | "default" -> Ok None
            | "llama3" ->
                match num "factor", num "low_freq_factor", num "high_freq_factor", num "original_max_position_embeddings" with
                | Ok f, Ok lo, Ok hi, Ok orig -> Ok(Some(Llama3RopeScaling(f, lo, hi, int orig)))
                | Error e, _, _, _ | _, Error e, _, _ | _, _, Error e, _ | _, _, _, Error e -> Error e
            | k -> fail "rope_scaling" $"has type '{k}'; supported: llama3 (or null)"
    let modelType =
        match tryProp root "model_type" with
        | Some v when v.ValueKind = JsonValueKind.String -> Ok(v.GetString())
        | Some v -> fail "model_type" $"must be a string, got {v.GetRawText()}"
        | None -> Error(MissingConfigField(path, "model_type"))
    // Result chaining without a computation-expression library: stop at the first error.
    match modelType with
    | Error e -> Error e
    | Ok mt ->
    match ModelFamily.ofModelType mt with
    | None -> Error(UnsupportedModelType(path, mt, ModelFamily.supported))
    | Some family ->
    match intField "hidden_size" None, intField "intermediate_size" None, intField "num_hidden_layers" None,
          intField "num_attention_heads" None, intField "vocab_size" None with
    | Error e, _, _, _, _ | _, Error e, _, _, _ | _, _, Error e, _, _ | _, _, _, Error e, _ | _, _, _, _, Error e -> Error e
    | Ok dim, Ok hidden, Ok layers, Ok heads, Ok vocab ->
    match intField "num_key_value_heads" (Some heads), intField "head_dim" (if dim % heads = 0 then Some(dim / heads) else None),
          intField "max_position_embeddings" (Some 2048) with
    | Error e, _, _ | _, Error e, _ | _, _, Error e -> Error e
    | Ok kvHeads, Ok headDim, Ok context ->
    match floatField "rms_norm_eps" 1e-6, floatField "rope_theta" 10000.0, boolField "tie_word_embeddings" false,
          boolField "attention_bias" false, ropeScaling () with
    | Error e, _, _, _, _ | _, Error e, _, _, _ | _, _, Error e, _, _ | _, _, _, Error e, _ | _, _, _, _, Error e -> Error e
    | Ok eps, Ok theta, Ok tied, Ok attnBias, Ok scaling ->
    // Features these families can switch on that the forward does not implement: refuse rather than
    // silently compute another model.
    let hiddenAct = tryProp root "hidden_act" |> Option.filter (fun v -> v.ValueKind = JsonValueKind.String) |> Option.map (fun v -> v.GetString())
    let flagOn name = match tryProp root name with Some v -> v.ValueKind = JsonValueKind.True | None -> false
    if hiddenAct |> Option.exists (fun a -> a <> "silu") then fail "hidden_act" $"is '{hiddenAct.Value}'; supported: silu (SwiGLU)"
    elif flagOn "mlp_bias" then fail "mlp_bias" "is true; MLP biases are not supported"
    elif flagOn "use_sliding_window" then fail "use_sliding_window" "is true; sliding-window attention is not supported"
    elif heads % kvHeads <> 0 then fail "num_key_value_heads" $"({kvHeads}) must divide num_attention_heads ({heads})"
    elif headDim % 2 <> 0 then fail "head_dim" $"must be even for RoPE, got {headDim}"
    else
    Ok { Family = family
         Dim = dim; Hidden = hidden; Layers = layers; Heads = heads; KvHeads = kvHeads; HeadDim = headDim
         Vocab = vocab; Context = context; NormEps = eps; RopeTheta = theta; RopeScaling = scaling
         RopeLayout = RopeLayout.HalfSplit; TiedEmbeddings = tied
         // Qwen2 always has q/k/v biases and no o_proj bias; Llama and Qwen3 use attention_bias for all four.
         QkvBias = (family = ModelFamily.Qwen2 || attnBias)
         OutputBias = (family <> ModelFamily.Qwen2 && attnBias)
         QkNorm = (family = ModelFamily.Qwen3) }

/// Reads `dir/config.json`.
let read (dir: string) : Result<ModelConfig, InputError> =
    let path = Path.Combine(dir, "config.json")
    if not (File.Exists path) then Error(FileNotFound path) else
    try
        use doc = JsonDocument.Parse(File.ReadAllText path)
        if doc.RootElement.ValueKind <> JsonValueKind.Object then Error(CorruptFile(path, "config.json is not a JSON object"))
        else parse path doc.RootElement
    with :? JsonException as e -> Error(CorruptFile(path, $"not valid JSON ({e.Message})"))

/// The config.json text of a model (the fields `parse` reads, plus architectures and torch_dtype).
let toJson (c: ModelConfig) (torchDtype: string) : string =
    let o = JsonObject()
    let arch =
        match c.Family with
        | ModelFamily.Llama -> "LlamaForCausalLM"
        | ModelFamily.Qwen2 -> "Qwen2ForCausalLM"
        | ModelFamily.Qwen3 -> "Qwen3ForCausalLM"
    o["architectures"] <- JsonArray(JsonValue.Create arch)
    o["model_type"] <- JsonValue.Create(ModelFamily.modelType c.Family)
    o["hidden_size"] <- JsonValue.Create c.Dim
    o["intermediate_size"] <- JsonValue.Create c.Hidden
    o["num_hidden_layers"] <- JsonValue.Create c.Layers
    o["num_attention_heads"] <- JsonValue.Create c.Heads
    o["num_key_value_heads"] <- JsonValue.Create c.KvHeads
    o["head_dim"] <- JsonValue.Create c.HeadDim
    o["vocab_size"] <- JsonValue.Create c.Vocab
    o["max_position_embeddings"] <- JsonValue.Create c.Context
    o["rms_norm_eps"] <- JsonValue.Create c.NormEps
    o["rope_theta"] <- JsonValue.Create c.RopeTheta
    o["tie_word_embeddings"] <- JsonValue.Create c.TiedEmbeddings
    if c.Family <> ModelFamily.Qwen2 then o["attention_bias"] <- JsonValue.Create c.OutputBias
    o["hidden_act"] <- JsonValue.Create "silu"
    o["torch_dtype"] <- JsonValue.Create torchDtype
    match c.RopeScaling with
    | None -> o["rope_scaling"] <- null
    | Some s ->
        let r = JsonObject()
        r["rope_type"] <- JsonValue.Create "llama3"
        r["factor"] <- JsonValue.Create s.Factor
        r["low_freq_factor"] <- JsonValue.Create s.LowFreqFactor
        r["high_freq_factor"] <- JsonValue.Create s.HighFreqFactor
        r["original_max_position_embeddings"] <- JsonValue.Create s.OriginalMaxPositions
        o["rope_scaling"] <- r
    o.ToJsonString(JsonSerializerOptions(WriteIndented = true))
