/// Loads a Hugging Face model directory: config.json plus model.safetensors, or the shards listed by
/// model.safetensors.index.json ({"weight_map": {tensor: file}}). BF16/F16/F32 tensors are widened to fp32.
module TaylorCalibrate.Pipeline.Model.HfCheckpoint

open System.Collections.Generic
open System.IO
open System.Text.Json
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io

/// The file name of a single-file checkpoint.
let singleFile = "model.safetensors"
/// The file name of a sharded checkpoint's index.
let indexFile = "model.safetensors.index.json"

/// Whether a directory looks like a Hugging Face model (has config.json).
let isModelDirectory (dir: string) = Directory.Exists dir && File.Exists(Path.Combine(dir, "config.json"))

/// tensor name -> shard file name, from an index file.
let private readIndex (path: string) : Result<IDictionary<string, string>, InputError> =
    try
        use doc = JsonDocument.Parse(File.ReadAllText path)
        let mutable map = Unchecked.defaultof<JsonElement>
        if doc.RootElement.ValueKind <> JsonValueKind.Object || not (doc.RootElement.TryGetProperty("weight_map", &map))
           || map.ValueKind <> JsonValueKind.Object then
            Error(CorruptFile(path, "has no 'weight_map' object"))
        else
            let d = Dictionary<string, string>()
            let mutable bad = None
            for p in map.EnumerateObject() do
                if p.Value.ValueKind = JsonValueKind.String then d[p.Name] <- p.Value.GetString()
                else bad <- Some p.Name
            match bad with
            | Some n -> Error(CorruptFile(path, $"weight_map entry '{n}' is not a file name"))
            | None -> Ok(d :> IDictionary<_, _>)
    with :? JsonException as e -> Error(CorruptFile(path, $"not valid JSON ({e.Message})"))

/// Reads the weights of a config from the directory's safetensors file(s); returns them with the stored
/// dtypes ("BF16 x 12", ...).
let readWeights (dir: string) (c: ModelConfig) : Result<TeacherWeights * string list, InputError> =
    let single = Path.Combine(dir, singleFile)
    let index = Path.Combine(dir, indexFile)
    let headers = Dictionary<string, Result<Safetensors.Header, InputError>>()
    let header file =
        match headers.TryGetValue file with
        | true, h -> h
        | _ ->
            let h = Safetensors.readHeader file
            headers[file] <- h
            h
    let dtypes = Dictionary<string, int>()
    let fromHeader (h: Safetensors.Header) name (shape: int[]) =
        match h.Entries |> List.tryFind (fun e -> e.Name = name) with
        | None -> Error(MissingTensor(h.Path, name))
        | Some e when e.Shape <> shape -> Error(ShapeMismatch(name, shape, e.Shape))
        | Some e ->
            dtypes[e.DType] <- (match dtypes.TryGetValue e.DType with | true, n -> n + 1 | _ -> 1)
            Safetensors.readF32 h name
    let reader : Result<string -> int[] -> Result<float32[], InputError>, InputError> =
        if File.Exists single then
            Ok(fun name shape -> header single |> Result.bind (fun h -> fromHeader h name shape))
        elif File.Exists index then
            readIndex index
            |> Result.map (fun map ->
                fun name shape ->
                    match map.TryGetValue name with
                    | false, _ -> Error(MissingTensor(index, name))
                    | true, file ->
                        let shard = Path.Combine(dir, file)
                        if not (File.Exists shard) then Error(MissingShard(index, file, name))
                        else header shard |> Result.bind (fun h -> fromHeader h name shape))
        else Error(FileNotFound(single + $" (nor {indexFile})"))
    reader
    |> Result.bind (HfLayout.assemble c)
    |> Result.map (fun w -> w, [ for KeyValue(d, n) in dtypes |> Seq.sortBy (fun kv -> kv.Key) -> $"{d} x {n}" ])

/// Loads config and weights of a Hugging Face model directory.
let load (dir: string) : Result<Teacher, InputError> =
    if not (Directory.Exists dir) then Error(FileNotFound dir) else
    HfConfig.read dir
    |> Result.bind (fun c ->
        readWeights dir c
        |> Result.map (fun (w, dtypes) ->
            { Config = c; Weights = w; Source = { Path = dir; Format = "huggingface"; DTypes = dtypes } }))
