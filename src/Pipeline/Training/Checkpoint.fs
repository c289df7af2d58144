/// Training checkpoints: everything a run needs to continue bit for bit (every parameter by name, the AdamW
/// moments, the step, the data stream's position, RNG states) and what identifies the run (its settings and
/// a model fingerprint), so a checkpoint of another run is refused naming the field that differs.
///
/// Layout under the checkpoint directory DIR:
///   DIR/step-000123/tensors.safetensors   "param/NAME", "adam_m/NAME", "adam_v/NAME" (F32)
///   DIR/step-000123/manifest.json         {"format", "version", "body_sha256", "body": {step, settings, ...,
///                                          tensors file size and SHA-256}}
///   DIR/latest                            the name of the newest complete checkpoint ("step-000123")
/// A save writes both files into a fresh DIR/.partial-* directory (each file atomically), renames it to
/// step-N, then rewrites `latest`, and only then deletes older checkpoints beyond the newest `Keep`. A crash at
/// any point therefore leaves `latest` naming a complete checkpoint. Loading verifies the manifest checksum
/// and the tensors file's size and SHA-256; a checkpoint that fails is skipped with a warning (returned, not
/// printed) in favour of the next newest, and an error says what was wrong with each when none is good.
module TaylorCalibrate.Pipeline.Training.Checkpoint

open System
open System.Globalization
open System.IO
open System.Security.Cryptography
open System.Text
open System.Text.Json
open System.Text.RegularExpressions
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io

/// What identifies a run: a resume must match both exactly.
type RunIdentity =
    { /// A fingerprint of the model's configuration (architecture, sizes, family, tokenizer).
      ModelFingerprint: string
      /// Every setting a resumed run must share (rates, batch, sequence length, seed, schedule, data files...).
      /// Keys name the fields in mismatch errors, so prefer one key per setting over one composite string.
      Settings: Map<string, string> }

/// The run's state at a step, besides the tensors.
type TrainingState =
    { /// Optimizer steps taken.
      Step: int
      /// The token stream's position, opaque to the checkpoint (the stream reads it back).
      DataPosition: int64[]
      /// Named RNG states (e.g. "shuffle").
      Rngs: Map<string, RngState>
      /// Free-form values the caller wants back on resume (tokens seen, best evaluation, ...).
      Extra: Map<string, string> }

/// Where a save has got to, for a test's crash-injection hook.
type SavePhase =
    /// tensors.safetensors is complete in the partial directory.
    | TensorsWritten
    /// manifest.json is complete in the partial directory.
    | ManifestWritten
    /// The partial directory has been renamed to step-N; `latest` still names the previous checkpoint.
    | Published
    /// `latest` names the new checkpoint; older ones are not yet pruned.
    | PointerWritten

/// How a save behaves.
type SaveOptions =
    { /// Complete checkpoints kept (≥ 1; the newest is always kept).
      Keep: int
      /// Called after each phase; a test throws here to simulate a crash.
      AfterPhase: SavePhase -> unit }

module SaveOptions =
    /// Keep the newest two; no hook.
    let defaults = { Keep = 2; AfterPhase = ignore }

/// A verified checkpoint read back to the host.
type Loaded =
    { /// The step-N directory it came from.
      Directory: string
      Identity: RunIdentity
      State: TrainingState
      /// Parameter values by name, with their shapes, in the saved order.
      Parameters: (string * int[] * float32[]) list
      /// AdamW (m, v) by trained parameter name.
      Moments: Map<string, float32[] * float32[]>
      /// Why newer checkpoints were skipped (empty when the latest was good).
      Warnings: string list }

let private formatName = "taylor-calibrate/training-checkpoint"
let private formatVersion = 1
let private tensorsFile = "tensors.safetensors"
let private manifestFile = "manifest.json"
let private latestFile = "latest"
let private stepDirPattern = Regex(@"^step-(\d+)$", RegexOptions.CultureInvariant)

/// The directory name of step n.
let stepDirectoryName (step: int) = "step-" + step.ToString("D6", CultureInfo.InvariantCulture)

let private hex (bytes: byte[]) = Convert.ToHexString(bytes).ToLowerInvariant()

let private fileSha256 (path: string) =
    use fs = File.OpenRead path
    hex (SHA256.HashData fs)

/// A fingerprint of parameter names and shapes in order (a different model or a different grouping of its
/// tensors gives a different value).
let parameterFingerprint (parameters: Parameter list) =
    let text = parameters |> List.map (fun p -> $"{p.Name}:{p.Value.ShapeText}") |> String.concat ";"
    hex (SHA256.HashData(Encoding.UTF8.GetBytes text))

/// The identity a checkpoint records: the caller's, plus the optimizer's own settings (betas, clip, schedule,
/// each group's rate and decay) and the parameter fingerprint, so those can never silently differ on resume.
let private effectiveIdentity (identity: RunIdentity) (optimizer: AdamW) =
    let f (v: float32) = v.ToString("R", CultureInfo.InvariantCulture)
    let groups =
        optimizer.Trained
        |> List.collect (fun t -> [ $"group.{t.Group}.lr", f t.Hyper.LearningRate; $"group.{t.Group}.weight_decay", f t.Hyper.WeightDecay ])
    let frozen = optimizer.Frozen |> List.map (fun p -> $"frozen.{p.Name}", "true")
    let own = Map(List.concat [ Map.toList (AdamWSettings.describe optimizer.Settings); groups; frozen
                                [ "parameters", parameterFingerprint optimizer.Parameters ] ])
    let clash = own |> Map.toSeq |> Seq.tryFind (fun (k, _) -> identity.Settings.ContainsKey k)
    match clash with
    | Some(k, _) -> invalidArg "identity" $"setting '{k}' is recorded by the optimizer itself; use another key"
    | None -> ()
    { identity with Settings = Map.fold (fun acc k v -> Map.add k v acc) identity.Settings own }

let private writeManifestBody (identity: RunIdentity) (state: TrainingState) (optimizer: AdamW) (tensorBytes: int64) (tensorSha: string) =
    use ms = new MemoryStream()
    do
        use w = new Utf8JsonWriter(ms)
        w.WriteStartObject()
        w.WriteNumber("step", state.Step)
        w.WriteString("model_fingerprint", identity.ModelFingerprint)
        w.WriteStartObject "settings"
        for KeyValue(k, v) in identity.Settings do w.WriteString(k, v)
        w.WriteEndObject()
        w.WriteStartArray "data_position"
        for v in state.DataPosition do w.WriteNumberValue v
        w.WriteEndArray()
        w.WriteStartObject "rng"
        for KeyValue(k, v) in state.Rngs do w.WriteString(k, RngState.toText v)
        w.WriteEndObject()
        w.WriteStartObject "extra"
        for KeyValue(k, v) in state.Extra do w.WriteString(k, v)
        w.WriteEndObject()
        w.WriteStartObject "tensors"
        w.WriteString("file", tensorsFile)
        w.WriteNumber("bytes", tensorBytes)
        w.WriteString("sha256", tensorSha)
        w.WriteEndObject()
        w.WriteStartArray "parameters"
        let trained = optimizer.Trained |> List.map (fun t -> t.Parameter.Name) |> Set.ofList
        for p in optimizer.Parameters do
            w.WriteStartObject()
            w.WriteString("name", p.Name)
            w.WriteStartArray "shape"
            for d in p.Value.Shape do w.WriteNumberValue d
            w.WriteEndArray()
            w.WriteBoolean("trained", trained.Contains p.Name)
            w.WriteEndObject()
        w.WriteEndArray()
        w.WriteEndObject()
    ms.ToArray()

let private stepDirectories (dir: string) =
    if not (Directory.Exists dir) then []
    else
        Directory.GetDirectories dir
        |> Array.choose (fun d ->
            let m = stepDirPattern.Match(Path.GetFileName d)
            if m.Success then
                match Int32.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture) with
                | true, n -> Some(n, d)
                | _ -> None
            else None)
        |> Array.sortByDescending fst
        |> List.ofArray

/// Writes a checkpoint of `optimizer`'s parameters and moments at `state.Step` into `dir` (see the layout
/// above) and makes it the latest; `state.Step` must equal the optimizer's steps taken.
let saveWith (options: SaveOptions) (dir: string) (identity: RunIdentity) (state: TrainingState) (optimizer: AdamW) =
    if options.Keep < 1 then invalidArg "options" $"keep {options.Keep} must be ≥ 1"
    if state.Step <> optimizer.StepsTaken then
        invalidArg "state" $"state step {state.Step} differs from the optimizer's {optimizer.StepsTaken} steps taken"
    let identity = effectiveIdentity identity optimizer
    Directory.CreateDirectory dir |> ignore
    let partial = Path.Combine(dir, $".partial-{stepDirectoryName state.Step}-{Environment.ProcessId}-{Guid.NewGuid():N}")
    Directory.CreateDirectory partial |> ignore
    let tensors =
        [ for p in optimizer.Parameters -> $"param/{p.Name}", p.Value.Shape, Safetensors.F32(p.Value.ToArray())
          for t in optimizer.Trained do
              yield $"adam_m/{t.Parameter.Name}", t.M.Shape, Safetensors.F32(t.M.ToArray())
              yield $"adam_v/{t.Parameter.Name}", t.V.Shape, Safetensors.F32(t.V.ToArray()) ]
    let tensorPath = Path.Combine(partial, tensorsFile)
    Safetensors.write tensorPath Map.empty tensors
    options.AfterPhase TensorsWritten
    let body = writeManifestBody identity state optimizer (FileInfo(tensorPath).Length) (fileSha256 tensorPath)
    AtomicFile.write (Path.Combine(partial, manifestFile)) (fun s ->
        use w = new Utf8JsonWriter(s, JsonWriterOptions(Indented = false))
        w.WriteStartObject()
        w.WriteString("format", formatName)
        w.WriteNumber("version", formatVersion)
        w.WriteString("body_sha256", hex (SHA256.HashData body))
        w.WritePropertyName "body"
        w.WriteRawValue(ReadOnlySpan body)
        w.WriteEndObject())
    options.AfterPhase ManifestWritten
    let final = Path.Combine(dir, stepDirectoryName state.Step)
    // A step-N already there is from an abandoned branch of the run (it was resumed from an older checkpoint,
    // perhaps because this one was corrupt) and is replaced. Should a crash fall between the delete and the
    // move, `latest` names a missing directory and loading falls back to the previous checkpoint, which is
    // still there: pruning happens only after the new pointer is written.
    if Directory.Exists final then Directory.Delete(final, true)
    Directory.Move(partial, final)
    options.AfterPhase Published
    AtomicFile.writeText (Path.Combine(dir, latestFile)) (stepDirectoryName state.Step + "\n")
    options.AfterPhase PointerWritten
    // Prune: keep the newest `Keep` checkpoints at or below this step; later ones belong to an abandoned branch.
    let kept = stepDirectories dir |> List.filter (fun (n, _) -> n <= state.Step) |> List.truncate options.Keep |> List.map snd |> Set.ofList
    for (_, d) in stepDirectories dir do
        if not (kept.Contains d) then (try Directory.Delete(d, true) with _ -> ())
    for d in Directory.GetDirectories(dir, ".partial-*") do
        if d <> partial then (try Directory.Delete(d, true) with _ -> ())

/// saveWith SaveOptions.defaults.
let save (dir: string) (identity: RunIdentity) (state: TrainingState) (optimizer: AdamW) =
    saveWith SaveOptions.defaults dir identity state optimizer

/// Why a checkpoint directory cannot be used (internal to tryRead).
exception private Unusable of string

let private unusable why = raise (Unusable why)

/// Reads and verifies one step directory; Error says what is wrong with it.
let private tryRead (stepDir: string) : Result<Loaded, string> =
    let manifestPath = Path.Combine(stepDir, manifestFile)
    let tensorPath = Path.Combine(stepDir, tensorsFile)
    try
        if not (File.Exists manifestPath) then unusable $"{manifestFile} is missing (the save did not finish)"
        if not (File.Exists tensorPath) then unusable $"{tensorsFile} is missing"
        use doc = JsonDocument.Parse(File.ReadAllBytes manifestPath)
        let root = doc.RootElement
        let str (e: JsonElement) (name: string) = e.GetProperty(name).GetString()
        if str root "format" <> formatName then unusable $"{manifestFile} is not a training checkpoint manifest"
        let version = root.GetProperty("version").GetInt32()
        if version <> formatVersion then unusable $"{manifestFile} has format version {version}, expected {formatVersion}"
        let body = root.GetProperty "body"
        if hex (SHA256.HashData(Encoding.UTF8.GetBytes(body.GetRawText()))) <> str root "body_sha256" then
            unusable $"{manifestFile} fails its checksum (corrupt)"
        let tensorsInfo = body.GetProperty "tensors"
        let size, recorded = FileInfo(tensorPath).Length, tensorsInfo.GetProperty("bytes").GetInt64()
        if size <> recorded then unusable $"{tensorsFile} has {size} bytes, the manifest recorded {recorded} (truncated)"
        if fileSha256 tensorPath <> str tensorsInfo "sha256" then unusable $"{tensorsFile} fails its SHA-256 checksum (corrupt)"
        let header =
            match Safetensors.readHeader tensorPath with
            | Ok h -> h
            | Error e -> unusable (InputError.describe e)
        let read name =
            match Safetensors.readF32 header name with
            | Ok a -> a
            | Error e -> unusable (InputError.describe e)
        let map (e: JsonElement) = e.EnumerateObject() |> Seq.map (fun p -> p.Name, p.Value.GetString()) |> Map.ofSeq
        let rngs =
            map (body.GetProperty "rng")
            |> Map.map (fun k v ->
                match RngState.tryParse v with
                | Some s -> s
                | None -> unusable $"RNG state '{k}' is malformed")
        let entries = body.GetProperty("parameters").EnumerateArray() |> List.ofSeq
        let parameters =
            entries |> List.map (fun e ->
                let name = str e "name"
                name, (e.GetProperty("shape").EnumerateArray() |> Seq.map (fun d -> d.GetInt32()) |> Array.ofSeq), read $"param/{name}")
        let moments =
            entries
            |> List.filter (fun e -> e.GetProperty("trained").GetBoolean())
            |> List.map (fun e -> let n = str e "name" in n, (read $"adam_m/{n}", read $"adam_v/{n}"))
            |> Map.ofList
        Ok { Directory = stepDir
             Identity = { ModelFingerprint = str body "model_fingerprint"; Settings = map (body.GetProperty "settings") }
             State =
               { Step = body.GetProperty("step").GetInt32()
                 DataPosition = body.GetProperty("data_position").EnumerateArray() |> Seq.map (fun v -> v.GetInt64()) |> Array.ofSeq
                 Rngs = rngs
                 Extra = map (body.GetProperty "extra") }
             Parameters = parameters
             Moments = moments
             Warnings = [] }
    with
    | Unusable why -> Error why
    | :? JsonException as e -> Error $"{manifestFile} is not valid JSON ({e.Message})"
    | :? Collections.Generic.KeyNotFoundException -> Error $"{manifestFile} lacks a required field"
    | :? InvalidOperationException as e -> Error $"{manifestFile} has a field of the wrong type ({e.Message})"
    | :? IOException as e -> Error e.Message
    | :? UnauthorizedAccessException as e -> Error e.Message

/// The newest good checkpoint in `dir`: the one `latest` names, else (with a warning per skipped checkpoint)
/// the newest other step directory that verifies. Error when `dir` holds no checkpoint (FileNotFound of its
/// `latest`) or none verifies (CorruptFile listing what was wrong with each).
let load (dir: string) : Result<Loaded, InputError> =
    let steps = stepDirectories dir
    let pointed =
        let path = Path.Combine(dir, latestFile)
        if File.Exists path then
            let name = (try File.ReadAllText(path).Trim() with _ -> "")
            if stepDirPattern.IsMatch name then Some(Path.Combine(dir, name)) else None
        else None
    let candidates =
        (Option.toList pointed @ (steps |> List.map snd)) |> List.distinct
    if candidates.IsEmpty then Error(FileNotFound(Path.Combine(dir, latestFile)))
    else
    let rec go (remaining: string list) (problems: (string * string) list) =
        match remaining with
        | [] ->
            let why = problems |> List.rev |> List.map (fun (d, p) -> $"{Path.GetFileName d}: {p}") |> String.concat "; "
            Error(CorruptFile(dir, $"no loadable training checkpoint ({why})"))
        | d :: rest ->
            let result = if Directory.Exists d then tryRead d else Error "the directory is missing"
            match result with
            | Ok loaded ->
                let warnings =
                    problems |> List.rev |> List.map (fun (bad, p) ->
                        $"{bad}: {p}; resuming from the previous checkpoint {Path.GetFileName d}")
                Ok { loaded with Warnings = warnings }
            | Error p -> go rest ((d, p) :: problems)
    go candidates []

let private describeValue (v: string option) = match v with Some s -> $"'{s}'" | None -> "(absent)"

/// The first field in which the saved identity differs from the current one (the model first, then the
/// settings by key), as CheckpointMismatch.
let private compareIdentity (path: string) (saved: RunIdentity) (current: RunIdentity) =
    if saved.ModelFingerprint <> current.ModelFingerprint then
        Error(CheckpointMismatch(path, "the model", $"'{saved.ModelFingerprint}'", $"'{current.ModelFingerprint}'"))
    else
        let keys = Set.union (saved.Settings |> Map.keys |> Set.ofSeq) (current.Settings |> Map.keys |> Set.ofSeq)
        match keys |> Seq.tryFind (fun k -> saved.Settings.TryFind k <> current.Settings.TryFind k) with
        | Some k -> Error(CheckpointMismatch(path, $"setting '{k}'", describeValue (saved.Settings.TryFind k), describeValue (current.Settings.TryFind k)))
        | None -> Ok()

/// Puts a loaded checkpoint into the optimizer's parameters and moments after checking that it belongs to this
/// run (CheckpointMismatch naming the first differing field; ShapeMismatch/MissingTensor naming a tensor).
/// Returns the state to continue from.
let restore (identity: RunIdentity) (loaded: Loaded) (optimizer: AdamW) : Result<TrainingState, InputError> =
    let current = effectiveIdentity identity optimizer
    let manifest = Path.Combine(loaded.Directory, manifestFile)
    let savedByName = loaded.Parameters |> List.map (fun (n, s, a) -> n, (s, a)) |> Map.ofList
    let checkTensors () =
        optimizer.Parameters |> List.tryPick (fun p ->
            match savedByName.TryFind p.Name with
            | None -> Some(MissingTensor(manifest, p.Name))
            | Some(shape, _) when shape <> p.Value.Shape -> Some(ShapeMismatch(p.Name, p.Value.Shape, shape))
            | Some _ -> None)
        |> function
            | Some e -> Error e
            | None ->
                let own = optimizer.Parameters |> List.map (fun p -> p.Name) |> Set.ofList
                match loaded.Parameters |> List.tryFind (fun (n, _, _) -> not (own.Contains n)) with
                | Some(n, _, _) -> Error(InvalidValue(n, $"is in the checkpoint {manifest} but not in this model"))
                | None -> Ok()
    // The model first, then the tensors (naming one beats a differing fingerprint), then every setting.
    let modelOnly = { loaded.Identity with Settings = current.Settings }
    let checks =
        compareIdentity manifest modelOnly current
        |> Result.bind checkTensors
        |> Result.bind (fun () -> compareIdentity manifest loaded.Identity current)
    match checks with
    | Error e -> Error e
    | Ok() ->
        match optimizer.Trained |> List.tryFind (fun t -> not (loaded.Moments.ContainsKey t.Parameter.Name)) with
        | Some t -> Error(MissingTensor(manifest, $"adam_m/{t.Parameter.Name}"))
        | None ->
            let be = optimizer.Backend
            for p in optimizer.Parameters do
                let _, values = savedByName[p.Name]
                be.Upload(p.Value, ReadOnlySpan values)
            optimizer.Restore(loaded.State.Step, loaded.Moments)
            Ok loaded.State

/// load, then restore: the state to continue from and the warnings of any fallback.
let resume (dir: string) (identity: RunIdentity) (optimizer: AdamW) : Result<TrainingState * string list, InputError> =
    match load dir with
    | Error e -> Error e
    | Ok loaded -> restore identity loaded optimizer |> Result.map (fun s -> s, loaded.Warnings)
