/// A whole conversion as calls a script or the CLI makes (docs/architecture.md §4): `prepare` loads and checks
/// every input (teacher, kept layers, calibration text) before anything is written; `takeOutput` takes the
/// output directory (an exclusive lock, the --resume check, the layers an interrupted run persisted); `run`
/// traces the teacher, runs the Taylor diagnostic, converts (docs/method.md §5), saves the student and writes
/// report.json and report.html. Every aligned layer is persisted under DIR/align, so a resume continues after
/// the last finished one. A run that fails leaves nothing it created, unless it holds what a resume continues
/// from (aligned layers, or the settings of an interrupted aligning run); it never removes what it did not create.
/// Under MPI (`takeOutputRanked`, `runRanked`) the converted layers are sharded over the ranks
/// (Parallel/ShardedConvert.fs, docs/architecture.md "Scale-out"): rank 0 alone takes, writes and cleans the
/// output directory; the others only persist their aligned layers under DIR/align.
module TaylorCalibrate.Pipeline.Stages.ConvertJob

open System
open System.Diagnostics
open System.IO
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Mpi
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Report
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text

/// Which layers keep softmax attention (docs/method.md §6).
type KeptLayers =
    /// These layer indices.
    | Layers of int list
    /// The uniform policy over this fraction of the layers, in (0, 1).
    | Uniform of fraction: float
    /// The kept layers of a `select-layers` file made for this teacher.
    | FromSelection of path: string

/// What a conversion is asked to do.
type Request =
    { Teacher: string
      Kept: KeptLayers
      Strategy: Convert.InitStrategy
      /// Calibration text (documents separated by <|endoftext|>). naive and zero-gate need none; given one,
      /// they trace it only to measure each layer's fit for the report.
      CalibText: string option
      /// Calibration tokens in all (calibrate-plus's held-out part included), a multiple of 256 (None: `defaultCalibTokens`).
      CalibTokens: int option
      /// Held-out calibration tokens from the end of the text, for calibrate-plus (None: `defaultDevTokens`).
      DevTokens: int option
      /// Evaluation text the calibration text must share no document with.
      EvalText: string option
      AllowOverlap: bool
      Expand: GqaExpand
      /// Alignment steps per layer (None: `defaultSteps`).
      Steps: int option
      /// Seed of the fresh gate parameters.
      Seed: int }

module Request =
    /// A request with every optional setting at its default.
    let defaults (teacher: string) (kept: KeptLayers) (strategy: Convert.InitStrategy) (calibText: string option) =
        { Teacher = teacher; Kept = kept; Strategy = strategy; CalibText = calibText; CalibTokens = None; DevTokens = None
          EvalText = None; AllowOverlap = false; Expand = GqaExpand.Heads; Steps = None; Seed = 0 }

/// Chunk length of the calibration batch (docs/method.md §5.1).
let calibChunk = Calibration.CalibrationOptions.defaults.Length

/// The default calibration budget of a strategy: every calibration token it reads, calibrate-plus's held-out
/// dev part included, so budgets compare across strategies. The paper's 4 × 256 for its five; 20,480 for
/// calibrate-plus (16,384 fit + 4,096 dev, docs/method.md §5.5).
let defaultCalibTokens = function Convert.InitStrategy.CalibratePlus -> 20480 | _ -> 1024

/// Held-out calibration tokens of a strategy out of a budget of n: calibrate-plus holds out a quarter of the
/// budget, at most 4,096 tokens (enough to rank states; more only slows its evaluations) and at least one chunk;
/// the published strategies none.
let defaultDevTokens (strategy: Convert.InitStrategy) (n: int) =
    match strategy with
    | Convert.InitStrategy.CalibratePlus -> max calibChunk (min 4096 (n / 4 / calibChunk * calibChunk))
    | _ -> 0

/// Alignment steps per layer: the paper's 300; calibrate-plus's cap (it stops early on held-out text).
let defaultSteps = function
    | Convert.InitStrategy.CalibratePlus -> CalibratePlus.PlusOptions.defaults.Steps
    | _ -> Align.AlignOptions.defaults.Steps

/// Checks a calibration budget.
let checkCalibTokens (n: int) : Result<unit, InputError> =
    if n < calibChunk || n % calibChunk <> 0 then
        Error(InvalidOption($"--calib-tokens {n}", $"must be a positive multiple of the chunk length {calibChunk}"))
    else Ok()

/// The inputs of a conversion, loaded and checked.
type Prepared =
    { Teacher: Teacher
      TeacherPath: string
      TokenizerPath: string
      Tokenizer: ITokenizer
      /// Layers that keep softmax attention (sorted) and the layers converted to GDN.
      Kept: int list
      Converted: int list
      Strategy: Convert.InitStrategy
      Steps: int
      Seed: int
      Expand: GqaExpand
      /// The calibration batch and its held-out part; None for naive and zero-gate given no calibration text.
      Calibration: Calibration.CalibrationSplit option
      /// Documents of the calibration text (empty without one).
      CalibDocs: string list
      /// The evaluation text and its documents, when given.
      EvalDocs: (string * string list) option
      AllowOverlap: bool
      /// What the caller should tell the user (text that is not clean UTF-8, an overlap check not made).
      Warnings: string list }

    /// The calibration batch. Only naive and zero-gate prepare without one; asking those for it is a mistake.
    member p.Batch =
        match p.Calibration with
        | Some s -> s.Fit
        | None -> invalidOp $"{Convert.InitStrategy.name p.Strategy} was prepared without a calibration text"

/// Documents of a text, and a warning when its bytes are not clean UTF-8.
let private readText (path: string) : Result<string list * string option, InputError> =
    Corpus.readDocuments path |> Result.map (fun docs -> docs, Corpus.textWarning path)

let private keptLayers (r: Request) (t: Teacher) : Result<int list, InputError> =
    let L = t.Config.Layers
    match r.Kept with
    | Layers ks -> LayerPolicy.validate "--keep" L ks
    | Uniform f ->
        // Written so that NaN fails too.
        if not (f > 0.0 && f < 1.0) then Error(InvalidOption("--keep-fraction", $"{f} must lie in (0, 1)"))
        else LayerPolicy.validate "--keep-fraction" L (LayerPolicy.uniform L f)
    | FromSelection file ->
        LayerSelectionFile.read file
        |> Result.bind (fun s -> LayerSelectionFile.keptFor file s (TeacherIdentity.ofTeacher r.Teacher t))
        |> Result.bind (LayerPolicy.validate "--keep-from" L)

/// The calibration split of a request (None when the strategy needs none and none was given), with warnings.
let private calibrationOf (r: Request) (t: Teacher) (tok: ITokenizer) =
    let name = Convert.InitStrategy.name r.Strategy
    match r.CalibText with
    | None ->
        if Convert.InitStrategy.needsTrace r.Strategy then
            Error(InvalidOption("--calib-text", $"{name} calibrates on the teacher's activations: give a calibration text (only naive and zero-gate need none)"))
        else
            match [ "--calib-tokens", r.CalibTokens.IsSome; "--calib-dev-tokens", r.DevTokens.IsSome; "--eval-text", r.EvalText.IsSome ]
                  |> List.tryFind snd with
            | Some(option, _) -> Error(InvalidOption(option, "sets up the calibration text; give --calib-text too"))
            | None -> Ok(None, [], None, [])
    | Some calibText ->
        let calibTokens = defaultArg r.CalibTokens (defaultCalibTokens r.Strategy)
        let devTokens = defaultArg r.DevTokens (defaultDevTokens r.Strategy calibTokens)
        inputResult {
            do! checkCalibTokens calibTokens
            let! fit = Calibration.fitChunks calibChunk calibTokens devTokens
            let opts = { Calibration.CalibrationOptions.defaults with Batch = fit; AllowOverlap = r.AllowOverlap }
            do! if opts.Length > t.Config.Context then
                    Error(InvalidOption("--calib-text", $"the calibration length {opts.Length} exceeds the teacher's context {t.Config.Context}"))
                else Ok()
            let! calibDocs, calibWarning = readText calibText
            let! eval =
                match r.EvalText with
                | None -> Ok None
                | Some p -> readText p |> Result.map (fun (docs, w) -> Some(p, docs, w))
            let evalDocs = eval |> Option.map (fun (p, docs, _) -> p, docs)
            let! split = Calibration.buildSplit opts devTokens tok calibText calibDocs evalDocs
            // Recorded too: the report's calibration.overlap_checked is false.
            let noOverlapCheck =
                if r.EvalText.IsNone then
                    Some "no --eval-text, so the calibration text was not checked for documents shared with an evaluation text"
                else None
            let warnings = List.choose id [ calibWarning; eval |> Option.bind (fun (_, _, w) -> w); noOverlapCheck ]
            return Some split, calibDocs, evalDocs, warnings }

/// Loads and checks every input of a conversion; nothing is written.
let prepare (r: Request) : Result<Prepared, InputError> =
    let steps = defaultArg r.Steps (defaultSteps r.Strategy)
    if steps < 1 then Error(InvalidOption("--steps", $"{steps} must be at least 1")) else
    inputResult {
        let! t = ModelFiles.loadTeacher r.Teacher
        // The gdn_v4 layer has no output bias (docs/method.md §3): converting would silently drop the teacher's.
        do! if t.Config.OutputBias then
                Error(InvalidOption($"--teacher {r.Teacher}", "its attention has an o_proj bias (attention_bias = true); the gdn_v4 student has none, so it cannot be built from this teacher"))
            else Ok()
        // A non-finite weight would only surface as a NaN alignment loss deep in Phase 2; name where it is now.
        do! match TeacherWeights.firstNonFinite t.Weights with
            | Some(name, i, v) -> Error(InvalidOption($"--teacher {r.Teacher}", $"tensor '{name}' holds {v} at flat index {i}; a teacher must have finite weights"))
            | None -> Ok()
        let! kept = keptLayers r t
        let! tokPath = ModelFiles.tokenizerPathFor r.Teacher t.Config.Vocab
        let! tok = ModelFiles.tokenizerFor r.Teacher t.Config None
        let! calibration, calibDocs, evalDocs, warnings = calibrationOf r t tok
        return
            { Teacher = t; TeacherPath = r.Teacher; TokenizerPath = tokPath; Tokenizer = tok; Kept = kept
              Converted = [ 0 .. t.Config.Layers - 1 ] |> List.except kept; Strategy = r.Strategy; Steps = steps; Seed = r.Seed
              Expand = r.Expand; Calibration = calibration; CalibDocs = calibDocs; EvalDocs = evalDocs; AllowOverlap = r.AllowOverlap
              Warnings = warnings } }

/// Fit and dev batches of n calibration tokens in all, devTokens of them held out, from the prepared
/// calibration text (the ablation's budgets).
let split (p: Prepared) (n: int) (devTokens: int) : Result<Calibration.CalibrationSplit, InputError> =
    inputResult {
        do! checkCalibTokens n
        let! fit = Calibration.fitChunks calibChunk n devTokens
        let opts = { Calibration.CalibrationOptions.defaults with Batch = fit; AllowOverlap = p.AllowOverlap }
        return! Calibration.buildSplit opts devTokens p.Tokenizer p.Batch.Source p.CalibDocs p.EvalDocs }

/// The settings a resumed run must share with the interrupted one, as (name, value) in a fixed order.
/// The calibration enters by its content (the SHA-256 of the batch's token ids) and shape, not only its path:
/// an edited calibration file must not resume layers aligned on the old one.
let settings (p: Prepared) : (string * string) list =
    let calibration =
        match p.Calibration with
        | None -> [ "calib", "none" ]
        | Some s ->
            let sha = Security.Cryptography.SHA256.HashData(Runtime.InteropServices.MemoryMarshal.AsBytes(ReadOnlySpan s.Fit.Tokens))
            [ "calib", Path.GetFullPath s.Fit.Source
              "calib_batch", $"{s.Fit.B}x{s.Fit.T}"
              "calib_tokens_sha256", System.Convert.ToHexString(sha).ToLowerInvariant()
              "dev_tokens", string (s.Dev |> Option.map (fun d -> d.B * d.T) |> Option.defaultValue 0) ]
    [ "teacher", Path.GetFullPath p.TeacherPath
      "kept", string p.Kept
      "init", Convert.InitStrategy.name p.Strategy
      "steps", string p.Steps
      "seed", string p.Seed
      "gqa_expand", GqaExpand.name p.Expand ]
    @ calibration

/// The settings as the text DIR/align/run.json holds: one `name=value` line each.
let settingsText (p: Prepared) = settings p |> List.map (fun (k, v) -> $"{k}={v}\n") |> String.concat ""

/// The first setting in which a recorded settings text differs from `current`: (name, recorded, current).
let settingsDifference (recorded: string) (current: (string * string) list) : (string * string * string) option =
    let parsed =
        recorded.Split('\n', StringSplitOptions.RemoveEmptyEntries)
        |> Array.map (fun line -> let i = line.IndexOf '=' in if i < 0 then line, "" else line[.. i - 1], line[i + 1 ..])
        |> List.ofArray
    let was = Map parsed
    let now = Map current
    let changed = current |> List.tryPick (fun (k, v) -> match was.TryFind k with Some w when w = v -> None | w -> Some(k, defaultArg w "(not recorded)", v))
    match changed with
    | Some d -> Some d
    | None -> parsed |> List.tryPick (fun (k, w) -> if now.ContainsKey k then None else Some(k, w, "(not a setting)"))

/// An output directory held by one conversion: locked, checked against --resume, with the layers a resume
/// restores. Disposing releases the lock and, unless the run finished or left what a resume continues from,
/// removes what this run created (the directory itself when it made it; never entries that were there before).
type Output internal (dir: string, lock: IDisposable, createdDir: bool, before: Set<string>,
                      restored: Map<int, GdnWeights * Align.AlignResult>, warnings: string list) =
    let mutable keep = false
    member _.Directory = dir
    /// Layers an interrupted run aligned and this one reuses (empty without --resume).
    member _.Restored = restored
    /// Checkpoints that are redone, and why.
    member _.Warnings = warnings
    /// Whether what this run leaves behind is kept (it finished, or a --resume can continue it).
    member _.Kept = keep
    member internal _.Keep() = keep <- true
    interface IDisposable with
        member _.Dispose() =
            if not keep && Directory.Exists dir then
                for entry in Directory.EnumerateFileSystemEntries dir |> Array.ofSeq do
                    if not (DirectoryLock.isLockFile entry) && not (before.Contains entry) then
                        if Directory.Exists entry then Directory.Delete(entry, true) else File.Delete entry
            lock.Dispose()
            if not keep && createdDir then
                // Another run may have taken the directory the moment the lock was released: remove it only if empty.
                try if not (Directory.EnumerateFileSystemEntries(dir).GetEnumerator().MoveNext()) then Directory.Delete dir
                with :? IOException -> ()

/// Takes `out` for the prepared conversion: created if absent, locked (a second writer fails naming the
/// holder), and checked: a non-empty directory needs `resume` and the same settings; a resume restores the
/// verified aligned layers.
let takeOutput (p: Prepared) (out: string) (resume: bool) : Result<Output, InputError> =
    if String.IsNullOrWhiteSpace out then Error(InvalidOption("--out", $"\"{out}\": expected a path"))
    elif File.Exists out then Error(InvalidOption("--out", $"{out} is a file"))
    else
    let createdDir = not (Directory.Exists out)
    match DirectoryLock.acquire out "convert" with
    | Error e -> Error(InvalidOption("--out", e))
    | Ok lock ->
        let before = Directory.EnumerateFileSystemEntries out |> Seq.filter (DirectoryLock.isLockFile >> not) |> Set.ofSeq
        let checkedOut =
            if before.IsEmpty then Ok(Map.empty, [])
            else
            match resume, AlignCheckpoint.readRun out with
            | false, _ -> Error(InvalidOption("--out", $"{out} exists and is not empty; choose another directory or pass --resume"))
            | true, None -> Error(InvalidOption("--resume", $"{out} holds no interrupted conversion (no align/run.json)"))
            | true, Some recorded ->
                match settingsDifference recorded (settings p) with
                | Some(name, was, now) -> Error(CheckpointMismatch(AlignCheckpoint.runFile out, name, was, now))
                | None ->
                    if Convert.InitStrategy.aligns p.Strategy then
                        AlignCheckpoint.resumeFrom out p.Converted |> Result.mapError (fun e -> InvalidOption("--resume", e))
                    else Ok(Map.empty, [])
        match checkedOut with
        | Ok(restored, warnings) -> Ok(new Output(out, lock, createdDir, before, restored, warnings))
        | Error e ->
            (new Output(out, lock, createdDir, before, Map.empty, []) :> IDisposable).Dispose()
            Error e

/// Takes `out` for a conversion run by every rank of an MPI job. The ranks first check that they run the same
/// conversion (the resume settings, --out and --resume; an error names the first setting that differs).
/// Rank 0 then takes the output as `takeOutput` does and tells the others the outcome: they get the same
/// error, or an Output that never locks, creates or removes anything, holding the layers rank 0 restored
/// (read back from DIR/align, which every rank must see). Every rank gets the same answer, so none waits
/// for one that stopped. One rank: `takeOutput`.
let takeOutputRanked (ranks: ICollectives) (p: Prepared) (out: string) (resume: bool) : Result<Output, InputError> =
    if ranks.Size = 1 then takeOutput p out resume else
    let own = settings p @ [ "out", out; "resume", string resume ] |> Map.ofList
    match Parallel.DataParallel.agree ranks own with
    | Error why -> Error(InvalidOption("mpirun", why))
    | Ok() ->
    let taken = if ranks.Rank = 0 then Some(takeOutput p out resume) else None
    // "ok" and the restored layers (comma-separated), or "error" and rank 0's message.
    let told =
        match taken with
        | Some(Ok o) -> "ok\n" + (o.Restored |> Map.toList |> List.map (fst >> string) |> String.concat ",")
        | Some(Error e) -> "error\n" + InputError.describe e
        | None -> ""
        |> Parallel.DataParallel.broadcastText ranks 0
    match taken with
    | Some result -> result
    | None ->
    match told.Split('\n', 2) with
    | [| "ok"; layers |] ->
        let restored = layers.Split(',', StringSplitOptions.RemoveEmptyEntries) |> Array.map int |> List.ofArray
        let loaded = restored |> List.map (fun i -> i, AlignCheckpoint.tryLoad out i)
        match loaded |> List.tryFind (snd >> Option.isNone) with
        | Some(i, _) ->
            let align = Path.Combine(out, "align")
            Error(InvalidOption("--out", $"rank {ranks.Rank} cannot read layer {i}, which rank 0 restored, under {align}; every rank must see --out (a shared filesystem)"))
        | None ->
            let noLock = { new IDisposable with member _.Dispose() = () }
            let o = new Output(out, noLock, false, Set.empty, loaded |> List.map (fun (i, l) -> i, l.Value) |> Map.ofList, [])
            // Nothing here is this rank's to remove: rank 0 owns the directory.
            o.Keep()
            Ok o
    | _ ->
        let why = told.Substring(told.IndexOf '\n' + 1)
        Error(InvalidOption("--out", $"rank 0 could not take {out}: {why}"))

/// What a running conversion reports.
type Event =
    /// The teacher trace over the calibration batch begins (not for naive and zero-gate without calibration).
    | Tracing
    | Traced
    /// The Taylor diagnostic of one converted layer finished.
    | Diagnosed of layer: int
    /// A layer's conversion begins (layers go in index order).
    | LayerStarted of layer: int
    /// One alignment step of a layer: (layer, step, loss).
    | Aligning of layer: int * step: int * loss: float
    /// Every layer is converted.
    | LayersDone

/// A finished conversion: the student (saved in Directory) and its report (report.json, report.html).
type Outcome =
    { Student: Student
      Report: ConvertReport.Report
      Directory: string }

/// The Taylor diagnostic is O(T²) per chunk on the host: it runs on the paper's batch size at most.
let private diagnosticChunks = 4

/// Runs the prepared conversion as one rank of `ranks` into an output from `takeOutputRanked`, with this
/// rank's converted layers and the trace's windows spread over `workers` (Parallel/LayerScheduler.fs).
/// Every rank traces the teacher and aligns its share of the layers (Parallel/ShardedConvert.fs); rank 0
/// runs the Taylor diagnostic, assembles, saves and reports, and returns the outcome (the other ranks None).
/// `progress` hears each event, possibly from several threads. Cancellation raises
/// OperationCanceledException after the aligned layers so far are persisted.
let runRanked (ranks: ICollectives) (workers: DeviceWorker list) (p: Prepared) (o: Output) (progress: Event -> unit) (ct: CancellationToken) : Outcome option =
    let be = workers.Head.Backend
    let writer = ranks.Rank = 0
    let out = o.Directory
    let timings = Collections.Generic.List<string * float>()
    let timed name f =
        let w = Stopwatch.StartNew()
        let r = f ()
        timings.Add(name, w.Elapsed.TotalSeconds)
        r
    let total = Stopwatch.StartNew()
    let aligns = Convert.InitStrategy.aligns p.Strategy
    let alignedNow = ref 0
    try
        if aligns && writer then AlignCheckpoint.writeRun out (settingsText p)
        // The settings of the run are on disk before any rank persists a layer that a resume would check against them.
        if aligns then ranks.Barrier()
        let opts =
            { Convert.ConvertOptions.defaults p.Strategy with
                Expand = p.Expand; Seed = p.Seed; Align = { Align.AlignOptions.defaults with Steps = p.Steps }
                Plus = { CalibratePlus.PlusOptions.defaults with Steps = p.Steps } }
        let converted =
            match p.Calibration with
            | None when not writer -> None
            | None ->
                let s = timed "convert" (fun () -> Convert.runUntraced p.Teacher p.Kept opts)
                progress LayersDone
                Some(s, [])
            | Some calibration ->
                progress Tracing
                // The trace's windows are spread over the workers (bit-identical on devices of one kind); the
                // teacher copies are freed before the alignment needs the memory.
                let trace, dev =
                    use copies = new TeacherTrace.TeacherCopies(p.Teacher)
                    timed "teacher_trace" (fun () ->
                        TeacherTrace.runStreamedOn workers copies calibration.Fit p.Converted TeacherTrace.windowChunks ct,
                        calibration.Dev |> Option.map (fun d -> TeacherTrace.runStreamedOn workers copies d p.Converted TeacherTrace.windowChunks ct))
                progress Traced
                let c = p.Teacher.Config
                // Only rank 0 reports it.
                let taylor =
                    if not writer then Map.empty else
                    timed "taylor_diagnostic" (fun () ->
                        p.Converted |> List.map (fun i ->
                            let r = TaylorDiagnostic.run c p.Teacher.Weights.Layers[i] trace.Layers[i] (min trace.B diagnosticChunks) trace.T
                            progress (Diagnosed i)
                            i, r) |> Map.ofList)
                let hooks : Convert.Hooks =
                    { Resume = o.Restored.TryFind
                      LayerAligned = (fun i w r -> AlignCheckpoint.save out i w r; alignedNow.Value <- alignedNow.Value + 1)
                      Step = (fun i s loss -> progress (Aligning(i, s, loss)))
                      LayerStarted = (fun i -> progress (LayerStarted i)) }
                let assembled = timed "convert" (fun () -> Parallel.ShardedConvert.run ranks out workers p.Teacher trace dev p.Kept opts hooks ct)
                assembled |> Option.map (fun (student, reports, _) ->
                    progress LayersDone
                    student, reports |> List.map (fun r -> ({ Convert = r; Taylor = taylor.TryFind r.Layer } : ConvertReport.LayerEntry)))
        match converted with
        | None -> None
        | Some(student, layers) ->
        timed "save" (fun () -> StudentIo.save out student (Some p.TokenizerPath))
        timings.Add("total", total.Elapsed.TotalSeconds)
        let report : ConvertReport.Report =
            { Teacher = p.TeacherPath; Init = Convert.InitStrategy.name p.Strategy; Kept = p.Kept; GqaExpand = GqaExpand.name p.Expand
              Seed = p.Seed; Steps = p.Steps; Calibration = p.Calibration |> Option.map (fun s -> s.Fit)
              Layers = layers; Timings = List.ofSeq timings
              Device =
                (match workers with [ w ] -> w.Backend.Name | ws -> ws |> List.map (fun w -> w.Id) |> String.concat ",")
                + (if ranks.Size > 1 then $" on rank 0 of {ranks.Size} MPI ranks" else "") }
        AtomicFile.writeText (Path.Combine(out, "report.json")) (ConvertReport.toJson report)
        AtomicFile.writeText (Path.Combine(out, "report.html")) (ReportHtml.convertPage report)
        o.Keep()
        Some { Student = student; Report = report; Directory = out }
    with e ->
        // What a --resume continues from is kept: layers aligned by this run, or an interrupted aligning run's
        // settings; with several ranks, layers the others may have persisted.
        if aligns && (alignedNow.Value > 0 || e :? OperationCanceledException || ranks.Size > 1) then o.Keep()
        reraise ()

/// Runs the prepared conversion as the only process (see runRanked).
let runOn (workers: DeviceWorker list) (p: Prepared) (o: Output) (progress: Event -> unit) (ct: CancellationToken) : Outcome =
    (runRanked SingleRank.Instance workers p o progress ct).Value

/// Runs the prepared conversion on one backend (see runOn).
let run (be: IBackend) (p: Prepared) (o: Output) (progress: Event -> unit) (ct: CancellationToken) : Outcome =
    runOn [ DeviceWorker(be.Name, be) ] p o progress ct

/// The whole conversion in one call, without progress: what `taylor-calibrate convert` does.
let convert (be: IBackend) (r: Request) (out: string) (resume: bool) (ct: CancellationToken) : Result<Outcome, InputError> =
    prepare r
    |> Result.bind (fun p -> takeOutput p out resume |> Result.map (fun o -> p, o))
    |> Result.map (fun (p, o) ->
        use o = o
        run be p o ignore ct)
