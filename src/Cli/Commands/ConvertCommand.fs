/// `taylor-calibrate convert`: teacher → calibrated hybrid student directory (docs/method.md §5), with progress per
/// stage and per layer. Inputs are validated before anything is written; every output file is written
/// atomically; aligned layers are persisted under DIR/align so --resume continues after the last finished one.
module TaylorCalibrate.Cli.ConvertCommand

open System
open System.Diagnostics
open System.IO
open System.Threading
open Argu
open Spectre.Console
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Report
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Cli.Common

type Args =
    | [<Mandatory>] Teacher of path: string
    | Keep of layers: string
    | Policy of name: string
    | Keep_Fraction of f: float
    | Keep_From of path: string
    | Init of strategy: string
    | [<Mandatory>] Calib_Text of path: string
    | Calib_Tokens of n: int
    | Calib_Dev_Tokens of n: int
    | Eval_Text of path: string
    | Allow_Overlap
    | [<Mandatory>] Out of dir: string
    | Steps of n: int
    | Seed of s: int
    | Gqa_Expand of mode: string
    | Device of device: string
    | Resume
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Teacher _ -> "teacher model: Hugging Face directory or llama2.c .bin"
            | Keep _ -> "comma-separated indices of the layers that keep softmax attention, e.g. 0,3"
            | Policy _ -> "kept-layer policy instead of --keep: uniform"
            | Keep_Fraction _ -> "fraction of layers kept by --policy (default 0.25)"
            | Keep_From _ -> "the kept layers of a `select-layers` file made for this teacher"
            | Init _ -> "naive | zero-gate | taylor-init | alignment-only | taylor-calibrate | calibrate-plus (default taylor-calibrate)"
            | Calib_Text _ -> "calibration text (documents separated by <|endoftext|>)"
            | Calib_Tokens _ -> "calibration tokens, a multiple of 256 (default 1024 for the published strategies, 16384 for calibrate-plus)"
            | Calib_Dev_Tokens _ -> "held-out calibration tokens from the end of --calib-text for calibrate-plus's selection (default 4096)"
            | Eval_Text _ -> "evaluation text the calibration text must not overlap (checked by document)"
            | Allow_Overlap -> "accept calibration documents that also occur in --eval-text"
            | Out _ -> "output student directory"
            | Steps _ -> "alignment steps per layer (default 300; calibrate-plus: at most 600, early-stopped on held-out text)"
            | Seed _ -> "seed of the fresh gate parameters (default 0)"
            | Gqa_Expand _ -> "heads (default) | rows (the reference's row repeat)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto); a list such as vulkan:0,vulkan:1 or cpu:0,cpu:1 spreads the converted layers over those devices"
            | Resume -> "continue an interrupted conversion into --out after its last aligned layer"

/// What both convert and the ablation resolve from the command line before any work.
type Prepared =
    { Teacher: Teacher
      TeacherPath: string
      TokenizerPath: string
      Tokenizer: ITokenizer
      Kept: int list
      Batch: Calibration.CalibrationBatch
      /// Held-out calibration text (calibrate-plus selects on it).
      Dev: Calibration.CalibrationBatch option
      Expand: GqaExpand
      EvalDocs: (string * string list) option
      CalibDocs: string list
      AllowOverlap: bool }

/// Chunk length of the calibration batch (docs/method.md §5.1).
let calibChunk = Calibration.CalibrationOptions.defaults.Length

/// The default calibration budget of a strategy: the paper's 4 × 256 for its five, more for calibrate-plus.
let defaultCalibTokens = function Convert.InitStrategy.CalibratePlus -> 16384 | _ -> 1024

/// Held-out calibration tokens of a strategy (only calibrate-plus uses them).
let defaultDevTokens = function Convert.InitStrategy.CalibratePlus -> 4096 | _ -> 0

/// Checks --calib-tokens.
let checkCalibTokens (n: int) =
    if n < calibChunk || n % calibChunk <> 0 then usageError $"--calib-tokens {n} must be a positive multiple of the chunk length {calibChunk}"

/// Fit and dev batches of n calibration tokens with devTokens held out.
let split (p: Prepared) (n: int) (devTokens: int) : Calibration.CalibrationSplit =
    checkCalibTokens n
    let opts = { Calibration.CalibrationOptions.defaults with Batch = n / calibChunk; AllowOverlap = p.AllowOverlap }
    Calibration.buildSplit opts devTokens p.Tokenizer p.Batch.Source p.CalibDocs p.EvalDocs |> orFail

/// Loads and validates the shared inputs (exit code 2 on any problem); `keepFrom` is a select-layers file.
let prepareWith (keepFrom: string option) teacherPath (keep: string option) (policy: string option) (fraction: float option) calibText
                (evalText: string option) allowOverlap (expand: string option) (calibTokens: int) (devTokens: int) : Prepared =
    let t = ModelFiles.loadTeacher teacherPath |> orFail
    // The gdn_v4 layer has no output bias (docs/method.md §3): converting would silently drop the teacher's.
    if t.Config.OutputBias then
        usageError $"--teacher {teacherPath}: its attention has an o_proj bias (attention_bias = true); the gdn_v4 student has none, so it cannot be built from this teacher"
    // A non-finite weight would only surface as a NaN alignment loss deep in Phase 2; name where it is now.
    match TeacherWeights.firstNonFinite t.Weights with
    | Some(name, i, v) -> usageError $"--teacher {teacherPath}: tensor '{name}' holds {v} at flat index {i}; a teacher must have finite weights"
    | None -> ()
    let L = t.Config.Layers
    let kept =
        match keep, policy, keepFrom with
        | _, _, Some file ->
            if keep.IsSome || policy.IsSome || fraction.IsSome then usageError "--keep-from: give one of --keep, --policy [--keep-fraction] or --keep-from"
            let selection = LayerSelectionFile.read file |> orFail
            LayerSelectionFile.keptFor file selection (TeacherIdentity.ofTeacher teacherPath t) |> orFail
        | Some _, Some _, None -> usageError "give either --keep or --policy, not both"
        | Some k, None, None -> LayerPolicy.parse "--keep" k |> orFail
        | None, Some "uniform", None ->
            let f = defaultArg fraction 0.25
            // Written so that NaN fails too.
            if not (f > 0.0 && f < 1.0) then usageError $"--keep-fraction {f} must lie in (0, 1)"
            LayerPolicy.uniform L f
        | None, Some p, None -> usageError $"--policy {p}: supported policies: uniform (select-layers writes ar and ga-s2 files for --keep-from)"
        | None, None, None -> usageError "give the kept layers with --keep 0,3, --policy uniform [--keep-fraction F] or --keep-from FILE.json"
    let kept = LayerPolicy.validate (if keepFrom.IsSome then "--keep-from" else "--keep") L kept |> orFail
    let expand =
        match expand with
        | None -> GqaExpand.Heads
        | Some e -> GqaExpand.parse e |> Option.defaultWith (fun () -> usageError $"--gqa-expand {e}: expected heads or rows")
    let tokPath = ModelFiles.tokenizerPathFor teacherPath t.Config.Vocab |> orFail
    let tok = ModelFiles.tokenizerFor teacherPath t.Config None |> orFail
    let calibDocs = readText calibText
    let evalDocs = evalText |> Option.map (fun p -> p, readText p)
    checkCalibTokens calibTokens
    let opts = { Calibration.CalibrationOptions.defaults with Batch = calibTokens / calibChunk; AllowOverlap = allowOverlap }
    if opts.Length > t.Config.Context then usageError $"the calibration length {opts.Length} exceeds the teacher's context {t.Config.Context}"
    let s = Calibration.buildSplit opts devTokens tok calibText calibDocs evalDocs |> orFail
    { Teacher = t; TeacherPath = teacherPath; TokenizerPath = tokPath; Tokenizer = tok; Kept = kept; Batch = s.Fit; Dev = s.Dev
      Expand = expand; EvalDocs = evalDocs; CalibDocs = calibDocs; AllowOverlap = allowOverlap }

/// The settings a resumed run must share with the interrupted one.
/// The calibration enters by its content (the SHA-256 of the batch's token ids) and shape, not only its path:
/// an edited calibration file must not resume layers aligned on the old one.
let private settingsText (p: Prepared) (strategy: Convert.InitStrategy) (steps: int) (seed: int) =
    let tokensSha =
        Security.Cryptography.SHA256.HashData(Runtime.InteropServices.MemoryMarshal.AsBytes(ReadOnlySpan p.Batch.Tokens))
        |> System.Convert.ToHexString
    $"teacher={Path.GetFullPath p.TeacherPath}\nkept={p.Kept}\ninit={Convert.InitStrategy.name strategy}\nsteps={steps}\nseed={seed}\ngqa_expand={GqaExpand.name p.Expand}\ncalib={Path.GetFullPath p.Batch.Source}\ncalib_batch={p.Batch.B}x{p.Batch.T}\ncalib_tokens_sha256={tokensSha.ToLowerInvariant()}\ndev_tokens={p.Dev |> Option.map (fun d -> d.B * d.T) |> Option.defaultValue 0}\n"

/// The Taylor diagnostic is O(T²) per chunk on the host: it runs on the paper's batch size at most.
let private diagnosticChunks = 4

/// prepareWith without a selection file.
let prepare teacherPath keep policy fraction calibText evalText allowOverlap expand calibTokens devTokens =
    prepareWith None teacherPath keep policy fraction calibText evalText allowOverlap expand calibTokens devTokens

let private runOn (world: TaylorCalibrate.Backend.Mpi.MpiWorld option) (args: ParseResults<Args>) =
    // Under mpirun the converted layers are sharded over the ranks (Parallel/ShardedConvert.fs); rank 0 reports.
    let ranks = match world with Some w -> w :> TaylorCalibrate.Backend.Mpi.ICollectives | None -> TaylorCalibrate.Backend.Mpi.SingleRank.Instance
    if ranks.Rank <> 0 then AnsiConsole.Console <- AnsiConsole.Create(AnsiConsoleSettings(Out = AnsiConsoleOutput(IO.TextWriter.Null)))
    let strategy =
        let s = args.GetResult(Init, "taylor-calibrate")
        Convert.InitStrategy.parse s |> Option.defaultWith (fun () -> usageError $"--init {s}: expected naive, zero-gate, taylor-init, alignment-only, taylor-calibrate or calibrate-plus")
    let steps = args.GetResult(Steps, (if strategy = Convert.InitStrategy.CalibratePlus then CalibratePlus.PlusOptions.defaults.Steps else 300))
    if steps < 1 then usageError $"--steps {steps} must be at least 1"
    let seed = args.GetResult(Seed, 0)
    let out = args.GetResult Out |> nonEmptyPath "--out"
    let resume = args.Contains Resume
    let p =
        prepareWith (args.TryGetResult Keep_From) (args.GetResult Teacher) (args.TryGetResult Keep) (args.TryGetResult Policy) (args.TryGetResult Keep_Fraction)
                (args.GetResult Calib_Text) (args.TryGetResult Eval_Text) (args.Contains Allow_Overlap) (args.TryGetResult Gqa_Expand)
                (args.GetResult(Calib_Tokens, defaultCalibTokens strategy)) (args.GetResult(Calib_Dev_Tokens, defaultDevTokens strategy))
    let settings = settingsText p strategy steps seed
    // Opened before --out is touched: a bad device list leaves nothing behind.
    use workers =
        match world with
        | None -> openWorkers (args.TryGetResult Device)
        | Some _ -> new DeviceWorkers([ (let b = openRankDevice world (args.TryGetResult Device) in TaylorCalibrate.Backend.DeviceWorker(b.Name, b)) ])
    let be = workers.First
    if File.Exists out then usageError $"--out {out} is a file"
    // Every rank must run the same conversion (one line of `settings` per setting).
    let settingsMap = settings.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> Array.map (fun l -> let i = l.IndexOf '=' in l[.. i - 1], l[i + 1 ..]) |> Map.ofArray
    Parallel.DataParallel.agree ranks settingsMap |> Result.defaultWith (fun e -> usageError $"mpirun: {e}")
    // Locked before anything is read from or written to it: a second writer fails here, naming the holder.
    // Rank 0 holds the lock for the job; the other ranks only add aligned layers under --out/align.
    use _lock =
        if ranks.Rank <> 0 then { new IDisposable with member _.Dispose() = () }
        else DirectoryLock.acquire out "convert" |> Result.defaultWith (fun e -> usageError $"--out {e}") :> IDisposable
    if ranks.Rank = 0 && Directory.EnumerateFileSystemEntries(out) |> Seq.exists (DirectoryLock.isLockFile >> not) then
        match resume, AlignCheckpoint.readRun out with
        | false, _ -> usageError $"--out {out} exists and is not empty; choose another directory or pass --resume"
        | true, None -> usageError $"--resume: {out} holds no interrupted conversion (no align/run.json)"
        | true, Some previous when previous <> settings -> usageError $"--resume: {out} was started with other settings:\n{previous}"
        | true, Some _ -> ()
    // Said once the inputs are known good, and recorded in the report (calibration.overlap_checked = false).
    if p.EvalDocs.IsNone then
        eprintfn "warning: no --eval-text, so the calibration text was not checked for documents shared with an evaluation text"
    // The other ranks start once rank 0 has checked and locked --out (or stopped the job).
    ranks.Barrier()
    let c = p.Teacher.Config
    let converted = [ 0 .. c.Layers - 1 ] |> List.except p.Kept
    use dt = new DeviceDecoder(be, p.Teacher)
    let restored =
        if not resume then Map.empty else
        match AlignCheckpoint.resumeFrom out converted with
        | Error e -> usageError $"--resume: {e}"
        | Ok(restored, warnings) ->
            for w in warnings do eprintfn "warning: %s" w
            let layers = restored |> Map.toList |> List.map fst
            printfn "resuming %s: layers %s restored from %s" out (if layers.IsEmpty then "none" else String.Join(", ", layers)) (Path.Combine(out, "align"))
            restored
    use cts = new CancellationTokenSource()
    let onCancel = ConsoleCancelEventHandler(fun _ e -> e.Cancel <- true; cts.Cancel())
    Console.CancelKeyPress.AddHandler onCancel
    use _cancelHandler = { new IDisposable with member _.Dispose() = Console.CancelKeyPress.RemoveHandler onCancel }
    let timings = Collections.Generic.List<string * float>()
    let timed name f =
        let w = Stopwatch.StartNew()
        let r = f ()
        timings.Add(name, w.Elapsed.TotalSeconds)
        r
    let total = Stopwatch.StartNew()
    AnsiConsole.MarkupLine("[bold]convert[/] " + Markup.Escape $"{p.TeacherPath} -> {out}: init {Convert.InitStrategy.name strategy}, kept {p.Kept}, converted {converted}, GQA {GqaExpand.name p.Expand}, device {workers.Name}")
    try
        if ranks.Rank = 0 && Convert.InitStrategy.aligns strategy then AlignCheckpoint.writeRun out settings
        let converted' =
            AnsiConsole.Progress()
                .AutoClear(false)
                .Columns(TaskDescriptionColumn(), ProgressBarColumn(), PercentageColumn(), ElapsedTimeColumn())
                .Start(fun ctx ->
                    let traceTask = ctx.AddTask("teacher trace", true, 1.0)
                    let trace, dev =
                        timed "teacher_trace" (fun () ->
                            TeacherTrace.runStreamed dt p.Batch converted TeacherTrace.windowChunks,
                            p.Dev |> Option.map (fun d -> TeacherTrace.runStreamed dt d converted TeacherTrace.windowChunks))
                    traceTask.Value <- 1.0
                    let diagTask = ctx.AddTask("Taylor diagnostic", true, float converted.Length)
                    let taylor =
                        timed "taylor_diagnostic" (fun () ->
                            (if ranks.Rank = 0 then converted else []) |> List.map (fun i ->
                                let r = TaylorDiagnostic.run c p.Teacher.Weights.Layers[i] trace.Layers[i] (min trace.B diagnosticChunks) trace.T
                                diagTask.Increment 1.0
                                i, r) |> Map.ofList)
                    let layerTasks =
                        converted |> List.map (fun i ->
                            let t = ctx.AddTask($"layer {i}", true, (if Convert.InitStrategy.aligns strategy then float steps else 1.0))
                            if restored.ContainsKey i then
                                t.Description <- $"layer {i} restored"
                                t.Value <- t.MaxValue
                            i, t) |> Map.ofList
                    let hooks : Convert.Hooks =
                        { Resume = restored.TryFind
                          LayerAligned = (fun i w r -> AlignCheckpoint.save out i w r)
                          Step = (fun i s loss ->
                              let t = layerTasks[i]
                              t.Value <- float s
                              t.Description <- $"layer {i} loss {loss:G4}")
                          LayerStarted = ignore }
                    let o = { Convert.ConvertOptions.defaults strategy with
                                Expand = p.Expand; Seed = seed; Align = { Align.AlignOptions.defaults with Steps = steps }
                                Plus = { CalibratePlus.PlusOptions.defaults with Steps = steps } }
                    let result = timed "convert" (fun () -> Parallel.ShardedConvert.run ranks out workers.Workers p.Teacher trace dev p.Kept o hooks cts.Token)
                    for KeyValue(_, t) in layerTasks do t.Value <- t.MaxValue
                    result |> Option.map (fun (student, reports, _) -> student, reports, taylor))
        match converted' with
        | None -> 0   // a rank other than 0: its layers are under --out/align, rank 0 assembles
        | Some(student, reports, taylor) ->
            timed "save" (fun () -> StudentIo.save out student (Some p.TokenizerPath))
            timings.Add("total", total.Elapsed.TotalSeconds)
            let report : ConvertReport.Report =
                { Teacher = p.TeacherPath; Init = Convert.InitStrategy.name strategy; Kept = p.Kept; GqaExpand = GqaExpand.name p.Expand
                  Seed = seed; Steps = steps; Calibration = p.Batch
                  Layers = reports |> List.map (fun r -> { Convert = r; Taylor = taylor.TryFind r.Layer })
                  Timings = List.ofSeq timings; Device = workers.Name }
            AtomicFile.writeText (Path.Combine(out, "report.json")) (ConvertReport.toJson report)
            AtomicFile.writeText (Path.Combine(out, "report.html")) (ReportHtml.convertPage report)
            for r in reports do
                let align = match r.Alignment with Some a -> $", alignment loss {a.Losses[0]:G4} -> {a.BestLoss:G4} (step {a.BestStep}, {a.Seconds:F1} s)" | None -> ""
                printfn "layer %d: MSE %.4g, cosine flattened %.4f, mean per-token %.4f%s" r.Layer r.Fit.Mse r.Fit.Cosine r.Fit.MeanTokenCosine align
            printfn "wrote %s (student, report.json, report.html) in %.1f s" out total.Elapsed.TotalSeconds
            0
    with
    | :? OperationCanceledException ->
        raise (Interrupted(if Convert.InitStrategy.usesPhase2 strategy then Some(commandLineWith "--resume") else None))
    | Parallel.LayerScheduler.JobsFailedException(message, _) ->
        // Several devices: the other layers finished and (when aligned) were persisted under --out/align.
        eprintfn "error: %s" message
        if Convert.InitStrategy.aligns strategy then eprintfn "the aligned layers are kept; continue with: %s" (commandLineWith "--resume")
        1

let run (args: ParseResults<Args>) =
    let world = startMpi ()
    onEveryRank world (fun () -> runOn world args)
