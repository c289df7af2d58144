/// The layer-selection file (`select-layers --out FILE.json`, read by `convert --keep-from`): the teacher's
/// identity, the policy and its init, k, the kept layers and every score, as JSON. Non-finite numbers are
/// written as the strings "Infinity", "-Infinity", "NaN" (JSON has no literal for them). Reading validates
/// everything and names the file and the field on any problem.
module TaylorCalibrate.Pipeline.Stages.LayerSelectionFile

open System
open System.Globalization
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages.LayerSelection

/// The "format" field every selection file carries.
let formatName = "taylor-calibrate layer selection"
let version = 1

let private number (v: float) : JsonNode =
    if Double.IsFinite v then JsonValue.Create v else JsonValue.Create(v.ToString(CultureInfo.InvariantCulture))

let private ints (xs: int list) = JsonArray(xs |> List.map (fun i -> JsonValue.Create i :> JsonNode) |> Array.ofList)

/// The selection as indented JSON.
let toJson (s: Selection) : string =
    let o = JsonObject()
    o["format"] <- JsonValue.Create formatName
    o["version"] <- JsonValue.Create version
    let t = JsonObject()
    t["path"] <- JsonValue.Create s.Teacher.Path
    t["weights_sha256"] <- JsonValue.Create s.Teacher.WeightsSha256
    let c = JsonObject()
    for k, v in s.Teacher.Config do c[k] <- JsonValue.Create v
    t["config"] <- c
    o["teacher"] <- t
    o["policy"] <- JsonValue.Create(Policy.name s.Policy)
    o["init"] <- (match Policy.init s.Policy with Some i -> JsonValue.Create(Convert.InitStrategy.name i) :> JsonNode | None -> null)
    o["layers"] <- JsonValue.Create s.Layers
    o["k"] <- JsonValue.Create s.K
    o["keep_full_attention_layers"] <- ints s.Kept
    match s.Measured with
    | None -> o["measurement"] <- null
    | Some m ->
        let e = JsonObject()
        e["eval_text"] <- JsonValue.Create m.EvalText
        e["window"] <- JsonValue.Create m.Window
        e["windows"] <- JsonValue.Create m.Windows
        e["teacher_perplexity"] <- number m.TeacherPerplexity
        e["score"] <- JsonValue.Create(match s.Policy with Policy.Ar -> "perplexity_increase" | _ -> "perplexity")
        e["calibration"] <-
            match m.Calibration with
            | None -> null
            | Some cal ->
                let j = JsonObject()
                j["text"] <- JsonValue.Create cal.Text
                j["batch"] <- JsonValue.Create cal.B
                j["length"] <- JsonValue.Create cal.T
                j :> JsonNode
        e["scores"] <-
            JsonArray(
                m.Scores
                |> List.map (fun r ->
                    let j = JsonObject()
                    j["layer"] <- JsonValue.Create r.Layer
                    j["perplexity"] <- number r.Perplexity
                    j["score"] <- number r.Score
                    j :> JsonNode)
                |> Array.ofList)
        o["measurement"] <- e
    o["seconds"] <- number s.Seconds
    o.ToJsonString(JsonSerializerOptions(WriteIndented = true)) + "\n"

/// Writes the selection atomically.
let write (path: string) (s: Selection) = AtomicFile.writeText path (toJson s)

/// A field problem, raised inside the parser and turned into an InputError naming the file.
exception private FieldError of string

let private fail (msg: string) : 'a = raise (FieldError msg)

let private field (o: JsonObject) (name: string) : JsonNode =
    let mutable v : JsonNode = null
    if o.TryGetPropertyValue(name, &v) then v else fail $"field '{name}' is missing"

let private obj (where: string) (n: JsonNode) : JsonObject =
    match n with
    | :? JsonObject as o -> o
    | _ -> fail $"field '{where}' must be an object"

let private str (where: string) (n: JsonNode) : string =
    try n.GetValue<string>() with _ -> fail $"field '{where}' must be a string"

let private int32 (where: string) (n: JsonNode) : int =
    try n.GetValue<int>() with _ -> fail $"field '{where}' must be an integer"

let private float (where: string) (n: JsonNode) : float =
    match n with
    | null -> fail $"field '{where}' must be a number"
    | _ ->
    match n.GetValueKind() with
    | JsonValueKind.Number -> n.GetValue<double>()
    | JsonValueKind.String ->
        match Double.TryParse(n.GetValue<string>(), NumberStyles.Float, CultureInfo.InvariantCulture) with
        | true, v -> v
        | _ -> fail $"field '{where}' must be a number"
    | _ -> fail $"field '{where}' must be a number"

let private arr (where: string) (n: JsonNode) : JsonNode list =
    match n with
    | :? JsonArray as a -> List.ofSeq a
    | _ -> fail $"field '{where}' must be an array"

let private parse (text: string) : Selection =
    let root =
        try JsonNode.Parse text with :? JsonException as e -> fail $"not valid JSON ({e.Message})"
    let o = obj "(root)" root
    let mutable f : JsonNode = null
    if not (o.TryGetPropertyValue("format", &f) && (try f.GetValue<string>() = formatName with _ -> false)) then
        fail $"not a layer-selection file (expected \"format\": \"{formatName}\"; written by select-layers)"
    let v = int32 "version" (field o "version")
    if v <> version then fail $"version {v} is not supported (expected {version})"
    let t = obj "teacher" (field o "teacher")
    let config = obj "teacher.config" (field t "config") |> Seq.map (fun kv -> kv.Key, str $"teacher.config.{kv.Key}" kv.Value) |> List.ofSeq
    let teacher : TeacherIdentity.TeacherIdentity =
        { Path = str "teacher.path" (field t "path"); Config = config; WeightsSha256 = str "teacher.weights_sha256" (field t "weights_sha256") }
    let init =
        match field o "init" with
        | null -> None
        | n ->
            let s = str "init" n
            match Convert.InitStrategy.parse s with
            | Some i -> Some i
            | None -> fail $"field 'init': unknown init strategy '{s}'"
    let policyName = str "policy" (field o "policy")
    let policy =
        match Policy.parse policyName init with
        | Ok p -> p
        | Error e -> fail $"fields 'policy'/'init': {InputError.describe e}"
    let layers = int32 "layers" (field o "layers")
    let k = int32 "k" (field o "k")
    let kept = arr "keep_full_attention_layers" (field o "keep_full_attention_layers") |> List.map (int32 "keep_full_attention_layers[]")
    if layers < 1 then fail $"field 'layers' is {layers}"
    if k < 1 || k > layers then fail $"field 'k' is {k}, outside 1..{layers}"
    if kept.Length <> k then fail $"field 'keep_full_attention_layers' lists {kept.Length} layers, but k is {k}"
    if kept <> List.sort (List.distinct kept) then fail "field 'keep_full_attention_layers' must be ascending without repeats"
    if kept |> List.exists (fun i -> i < 0 || i >= layers) then fail $"field 'keep_full_attention_layers' has a layer outside 0..{layers - 1}"
    let measured =
        match field o "measurement" with
        | null -> None
        | n ->
            let e = obj "measurement" n
            let calibration =
                match field e "calibration" with
                | null -> None
                | c ->
                    let c = obj "measurement.calibration" c
                    Some { Text = str "measurement.calibration.text" (field c "text"); B = int32 "measurement.calibration.batch" (field c "batch")
                           T = int32 "measurement.calibration.length" (field c "length") }
            let scores =
                arr "measurement.scores" (field e "scores")
                |> List.map (fun s ->
                    let s = obj "measurement.scores[]" s
                    { Layer = int32 "measurement.scores[].layer" (field s "layer")
                      Perplexity = float "measurement.scores[].perplexity" (field s "perplexity")
                      Score = float "measurement.scores[].score" (field s "score") })
            Some { EvalText = str "measurement.eval_text" (field e "eval_text"); Window = int32 "measurement.window" (field e "window")
                   Windows = int32 "measurement.windows" (field e "windows")
                   TeacherPerplexity = float "measurement.teacher_perplexity" (field e "teacher_perplexity")
                   Scores = scores; Calibration = calibration }
    match policy, measured with
    | Policy.Uniform, Some _ -> fail "field 'measurement' must be null for the uniform policy"
    | (Policy.Ar | Policy.GaS2 _), None -> fail $"field 'measurement' is missing for the {policyName} policy"
    | _ -> ()
    { Teacher = teacher; Policy = policy; Layers = layers; K = k; Kept = kept; Measured = measured
      Seconds = float "seconds" (field o "seconds") }

/// Reads a selection file.
let read (path: string) : Result<Selection, InputError> =
    if not (File.Exists path) then Error(FileNotFound path)
    else
        try Ok(parse (File.ReadAllText path))
        with FieldError msg -> Error(CorruptFile(path, msg))

/// The kept layers of a selection for `teacher`, or an error naming the file and what differs when it was
/// made for another teacher.
let keptFor (path: string) (s: Selection) (teacher: TeacherIdentity.TeacherIdentity) : Result<int list, InputError> =
    match TeacherIdentity.mismatch s.Teacher teacher with
    | Some why -> Error(InvalidOption("--keep-from", $"{path} was made for another teacher ({s.Teacher.Path}): {why}"))
    | None -> Ok s.Kept
