/// Saves and loads a student as a Hugging Face-style directory (docs/method.md §3 names; docs/architecture.md):
/// config.json = the teacher's config fields + model_type "student", student_name "gdn_v4",
/// keep_full_attention_layers, gqa_expand, init (and teacher_model_type, rope_pairing so a llama2.c teacher
/// round-trips); model.safetensors (F32) with prefix model.layers.{i}.; the teacher's tokenizer file copied.
/// Every file is written atomically; fp32 throughout, so a reload is bit-identical.
module TaylorCalibrate.Pipeline.Student.StudentIo

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model

/// The weights file of a student directory.
let weightsFile = "model.safetensors"

/// Whether `dir` holds a student (config.json with model_type "student").
let isStudentDirectory (dir: string) =
    let p = Path.Combine(dir, "config.json")
    Directory.Exists dir && File.Exists p
    && (try
            use doc = JsonDocument.Parse(File.ReadAllText p)
            let mutable v = Unchecked.defaultof<JsonElement>
            doc.RootElement.ValueKind = JsonValueKind.Object && doc.RootElement.TryGetProperty("model_type", &v)
            && v.ValueKind = JsonValueKind.String && v.GetString() = "student"
        with _ -> false)

/// Name, shape and data of every tensor of the student, in file order.
let tensors (s: Student) : (string * int[] * float32[]) list =
    let c = s.Config
    let D, Q, K, H, hd = c.Dim, c.QDim, c.KvDim, c.Heads, c.HeadDim
    let w = s.Base
    [ yield "model.embeddings.weight", [| c.Vocab; D |], w.Embedding
      for i, l in Array.indexed w.Layers do
          let p = $"model.layers.{i}."
          yield p + "attn_norm.weight", [| D |], l.AttnNorm
          match s.Gdn.TryFind i with
          | Some g ->
              yield p + "attn.q_proj.weight", [| Q; D |], g.Wq
              yield p + "attn.k_proj.weight", [| Q; D |], g.Wk
              yield p + "attn.v_proj.weight", [| Q; D |], g.Wv
              yield p + "attn.g_proj.weight", [| Q; D |], g.Wg
              yield p + "attn.a_proj.weight", [| H; D |], g.Wa
              yield p + "attn.b_proj.weight", [| H; D |], g.Wb
              yield p + "attn.A_log", [| H |], g.ALog
              yield p + "attn.dt_bias", [| H |], g.DtBias
              yield p + "attn.o_norm.weight", [| hd |], g.ONorm
              yield p + "attn.o_proj.weight", [| D; Q |], g.Wo
          | None ->
              yield p + "attn.q_proj.weight", [| Q; D |], l.Wq
              yield p + "attn.k_proj.weight", [| K; D |], l.Wk
              yield p + "attn.v_proj.weight", [| K; D |], l.Wv
              yield p + "attn.o_proj.weight", [| D; Q |], l.Wo
              match l.Bq, l.Bk, l.Bv with
              | Some bq, Some bk, Some bv ->
                  yield p + "attn.q_proj.bias", [| Q |], bq
                  yield p + "attn.k_proj.bias", [| K |], bk
                  yield p + "attn.v_proj.bias", [| K |], bv
              | _ -> ()
              match l.Bo with Some b -> yield p + "attn.o_proj.bias", [| D |], b | None -> ()
              match l.QNorm, l.KNorm with
              | Some qn, Some kn ->
                  yield p + "attn.q_norm.weight", [| hd |], qn
                  yield p + "attn.k_norm.weight", [| hd |], kn
              | _ -> ()
          yield p + "mlp_norm.weight", [| D |], l.MlpNorm
          yield p + "mlp.gate_proj.weight", [| c.Hidden; D |], l.Gate
          yield p + "mlp.up_proj.weight", [| c.Hidden; D |], l.Up
          yield p + "mlp.down_proj.weight", [| D; c.Hidden |], l.Down
      yield "model.norm.weight", [| D |], w.FinalNorm
      match w.LmHead with Some a -> yield "lm_head.weight", [| c.Vocab; D |], a | None -> () ]

/// The config.json text of a student; `tokenizerFile` is the copied tokenizer's file name.
let configJson (s: Student) (tokenizerFile: string option) : string =
    let o = JsonNode.Parse(HfConfig.toJson s.Config "float32").AsObject()
    o["architectures"] <- JsonArray(JsonValue.Create "GatedDeltaNetHybridForCausalLM")
    o["teacher_model_type"] <- JsonValue.Create(ModelFamily.modelType s.Config.Family)
    o["model_type"] <- JsonValue.Create "student"
    o["student_name"] <- JsonValue.Create "gdn_v4"
    o["keep_full_attention_layers"] <- JsonArray(s.Kept |> List.map (fun i -> JsonValue.Create i :> JsonNode) |> Array.ofList)
    o["gqa_expand"] <- JsonValue.Create(GqaExpand.name s.GqaExpand)
    o["init"] <- JsonValue.Create s.Init
    o["rope_pairing"] <- JsonValue.Create(match s.Config.RopeLayout with RopeLayout.Adjacent -> "adjacent" | _ -> "half_split")
    o["attention_bias"] <- JsonValue.Create s.Config.OutputBias
    o["qkv_bias"] <- JsonValue.Create s.Config.QkvBias
    // gdn_v4 fixed arguments (docs/method.md §3), recorded for PyTorch users.
    o["expand_v"] <- JsonValue.Create 1
    o["use_gate"] <- JsonValue.Create true
    o["use_short_conv"] <- JsonValue.Create false
    o["allow_neg_eigval"] <- JsonValue.Create false
    o["norm_eps"] <- JsonValue.Create 1e-5
    tokenizerFile |> Option.iter (fun f -> o["tokenizer_file"] <- JsonValue.Create f)
    o.ToJsonString(JsonSerializerOptions(WriteIndented = true))

/// Writes the student into `dir` (created if needed), each file atomically; copies `tokenizer` if given.
let save (dir: string) (s: Student) (tokenizer: string option) =
    Directory.CreateDirectory dir |> ignore
    let tokName = tokenizer |> Option.map Path.GetFileName
    let data = tensors s |> List.map (fun (n, shape, a) -> n, shape, Safetensors.F32 a)
    Safetensors.write (Path.Combine(dir, weightsFile)) (Map [ "format", "pt" ]) data
    tokenizer |> Option.iter (fun t ->
        let bytes = File.ReadAllBytes t
        AtomicFile.write (Path.Combine(dir, Path.GetFileName t)) (fun st -> st.Write(bytes, 0, bytes.Length)))
    AtomicFile.writeText (Path.Combine(dir, "config.json")) (configJson s tokName)

let private tryProp (o: JsonElement) (name: string) =
    let mutable v = Unchecked.defaultof<JsonElement>
    if o.TryGetProperty(name, &v) && v.ValueKind <> JsonValueKind.Null then Some v else None

/// The tokenizer file named by a student's config (or tokenizer.json / a single tok*.bin in the directory).
let tokenizerPath (dir: string) : Result<string, InputError> =
    let cfg = Path.Combine(dir, "config.json")
    let named =
        try
            use doc = JsonDocument.Parse(File.ReadAllText cfg)
            tryProp doc.RootElement "tokenizer_file" |> Option.map (fun v -> Path.Combine(dir, v.GetString()))
        with _ -> None
    match named with
    | Some p when File.Exists p -> Ok p
    | _ ->
        let json = Path.Combine(dir, "tokenizer.json")
        let bins = if Directory.Exists dir then Directory.GetFiles(dir, "tok*.bin") else [||]
        if File.Exists json then Ok json
        elif bins.Length = 1 then Ok bins[0]
        else Error(TokenizerNotFound(dir, "no tokenizer_file, tokenizer.json or single tok*.bin in the directory"))

/// Reads a student's config: the teacher config, the kept layers, the GQA expansion and the init name.
let readConfig (dir: string) : Result<ModelConfig * int list * GqaExpand * string, InputError> =
    let path = Path.Combine(dir, "config.json")
    if not (File.Exists path) then Error(FileNotFound path) else
    try
        let o = JsonNode.Parse(File.ReadAllText path).AsObject()
        let str (name: string) =
            match o[name] with
            | null -> Error(MissingConfigField(path, name))
            | n -> try Ok(n.GetValue<string>()) with _ -> Error(InvalidConfigField(path, name, "must be a string"))
        match str "model_type", str "student_name", str "teacher_model_type" with
        | Error e, _, _ | _, Error e, _ | _, _, Error e -> Error e
        | Ok mt, _, _ when mt <> "student" -> Error(UnsupportedModelType(path, mt, [ "student" ]))
        | _, Ok sn, _ when sn <> "gdn_v4" -> Error(InvalidConfigField(path, "student_name", $"is '{sn}'; supported: gdn_v4"))
        | Ok _, Ok _, Ok teacherType ->
        // Variants of the GDN layer this student does not implement: refused, since ignoring them would run a
        // different model than the file describes.
        let unsupported =
            [ "expand_v", (fun (n: JsonNode) -> n.GetValue<double>() <> 1.0), "must be 1 (no value expansion is implemented)"
              "use_short_conv", (fun n -> n.GetValue<bool>()), "must be false (the short convolution is not implemented)"
              "use_gate", (fun n -> not (n.GetValue<bool>())), "must be true (the output gate is always applied)" ]
            |> List.tryPick (fun (name, bad, why) ->
                match o[name] with
                | null -> None
                | n -> if bad n then Some(InvalidConfigField(path, name, why)) else None)
        match unsupported with
        | Some e -> Error e
        | None ->
        o["model_type"] <- JsonValue.Create teacherType
        use doc = JsonDocument.Parse(o.ToJsonString())
        match HfConfig.parse path doc.RootElement with
        | Error e -> Error e
        | Ok c ->
        let c =
            { c with
                RopeLayout = (match o["rope_pairing"] with
                              | null -> c.RopeLayout
                              | n when n.GetValue<string>() = "adjacent" -> RopeLayout.Adjacent
                              | _ -> RopeLayout.HalfSplit)
                QkvBias = (match o["qkv_bias"] with null -> c.QkvBias | n -> n.GetValue<bool>()) }
        let kept =
            match o["keep_full_attention_layers"] with
            | :? JsonArray as a ->
                try Ok [ for n in a -> n.GetValue<int>() ]
                with _ -> Error(InvalidConfigField(path, "keep_full_attention_layers", "must be a list of integers"))
            | _ -> Error(MissingConfigField(path, "keep_full_attention_layers"))
        let expand =
            match o["gqa_expand"] with
            | null -> Ok GqaExpand.Heads
            | n ->
                match GqaExpand.parse (n.GetValue<string>()) with
                | Some e -> Ok e
                | None -> Error(InvalidConfigField(path, "gqa_expand", "must be \"heads\" or \"rows\""))
        let init = match o["init"] with null -> "unknown" | n -> n.GetValue<string>()
        match kept, expand with
        | Error e, _ | _, Error e -> Error e
        | Ok kept, Ok expand ->
            if kept |> List.exists (fun i -> i < 0 || i >= c.Layers) then
                Error(InvalidConfigField(path, "keep_full_attention_layers", $"has an index outside 0..{c.Layers - 1}"))
            elif List.distinct kept <> kept || List.sort kept <> kept then
                Error(InvalidConfigField(path, "keep_full_attention_layers", "must be sorted and free of duplicates"))
            else Ok(c, kept, expand, init)
    with
    | :? JsonException as e -> Error(CorruptFile(path, $"not valid JSON ({e.Message})"))
    | :? InvalidOperationException as e -> Error(CorruptFile(path, $"a field has the wrong type ({e.Message})"))

/// Loads a student directory; the tensors must match the config exactly (names and shapes, no extras).
let load (dir: string) : Result<Student, InputError> =
    if not (Directory.Exists dir) then Error(FileNotFound dir) else
    match readConfig dir with
    | Error e -> Error e
    | Ok(c, kept, expand, init) ->
    match Safetensors.readHeader (Path.Combine(dir, weightsFile)) with
    | Error e -> Error e
    | Ok h ->
    let keptSet = Set.ofList kept
    let empty = [||]
    let layerTemplate (i: int) : LayerWeights =
        let kept = keptSet.Contains i
        let optIf flag = if kept && flag then Some empty else None
        { AttnNorm = empty; Wq = empty; Wk = empty; Wv = empty; Wo = empty
          Bq = optIf c.QkvBias; Bk = optIf c.QkvBias; Bv = optIf c.QkvBias; Bo = optIf c.OutputBias
          QNorm = optIf c.QkNorm; KNorm = optIf c.QkNorm; MlpNorm = empty; Gate = empty; Up = empty; Down = empty }
    let gdnTemplate =
        { Wq = empty; Wk = empty; Wv = empty; Wg = empty; Wa = empty; Wb = empty; ALog = empty; DtBias = empty
          ONorm = empty; Wo = empty }
    let template =
        { Config = c
          Base =
            { Embedding = empty; Layers = Array.init c.Layers layerTemplate; FinalNorm = empty
              LmHead = (if c.TiedEmbeddings then None else Some empty) }
          Kept = kept
          Gdn = Map [ for i in 0 .. c.Layers - 1 do if not (keptSet.Contains i) then i, gdnTemplate ]
          GqaExpand = expand
          Init = init }
    let expected = tensors template
    let expectedNames = expected |> List.map (fun (n, _, _) -> n) |> Set.ofList
    match h.Entries |> List.tryFind (fun e -> not (expectedNames.Contains e.Name)) with
    | Some e ->
        Error(CorruptFile(h.Path, $"unexpected tensor '{e.Name}' (config.json keeps layers {kept}; tensors and config disagree)"))
    | None ->
    let values = Collections.Generic.Dictionary<string, float32[]>()
    let firstError =
        expected |> List.tryPick (fun (name, shape, _) ->
            match h.Entries |> List.tryFind (fun e -> e.Name = name) with
            | None -> Some(MissingTensor(h.Path, name))
            | Some e when e.Shape <> shape -> Some(ShapeMismatch(name, shape, e.Shape))
            | Some _ ->
                match Safetensors.readF32 h name with
                | Ok a -> values[name] <- a; None
                | Error e -> Some e)
    match firstError with
    | Some e -> Error e
    | None ->
    let get n = values[n]
    let layer i (t: LayerWeights) =
        let p = $"model.layers.{i}."
        let opt (o: float32[] option) n = o |> Option.map (fun _ -> get (p + n))
        let kept = keptSet.Contains i
        let att n = if kept then get (p + n) else empty
        { t with
            AttnNorm = get (p + "attn_norm.weight"); MlpNorm = get (p + "mlp_norm.weight")
            Gate = get (p + "mlp.gate_proj.weight"); Up = get (p + "mlp.up_proj.weight"); Down = get (p + "mlp.down_proj.weight")
            Wq = att "attn.q_proj.weight"; Wk = att "attn.k_proj.weight"; Wv = att "attn.v_proj.weight"; Wo = att "attn.o_proj.weight"
            Bq = opt t.Bq "attn.q_proj.bias"; Bk = opt t.Bk "attn.k_proj.bias"; Bv = opt t.Bv "attn.v_proj.bias"
            Bo = opt t.Bo "attn.o_proj.bias"; QNorm = opt t.QNorm "attn.q_norm.weight"; KNorm = opt t.KNorm "attn.k_norm.weight" }
    let gdn i =
        let p = $"model.layers.{i}.attn."
        { Wq = get (p + "q_proj.weight"); Wk = get (p + "k_proj.weight"); Wv = get (p + "v_proj.weight")
          Wg = get (p + "g_proj.weight"); Wa = get (p + "a_proj.weight"); Wb = get (p + "b_proj.weight")
          ALog = get (p + "A_log"); DtBias = get (p + "dt_bias"); ONorm = get (p + "o_norm.weight"); Wo = get (p + "o_proj.weight") }
    Ok { template with
           Base =
             { Embedding = get "model.embeddings.weight"
               Layers = template.Base.Layers |> Array.mapi layer
               FinalNorm = get "model.norm.weight"
               LmHead = template.Base.LmHead |> Option.map (fun _ -> get "lm_head.weight") }
           Gdn = template.Gdn |> Map.map (fun i _ -> gdn i) }
