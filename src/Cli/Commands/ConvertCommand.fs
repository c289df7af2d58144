/// `taylor-calibrate convert`: teacher → calibrated hybrid student directory (method.md §5), with progress per
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
    | Init of strategy: string
    | [<Mandatory>] Calib_Text of path: string
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
            | Init _ -> "naive | zero-gate | taylor-init | alignment-only | taylor-calibrate (default taylor-calibrate)"
            | Calib_Text _ -> "calibration text (documents separated by <|endoftext|>)"
            | Eval_Text _ -> "evaluation text the calibration text must not overlap (checked by document)"
            | Allow_Overlap -> "accept calibration documents that also occur in --eval-text"
            | Out _ -> "output student directory"
            | Steps _ -> "Phase 2 steps per layer (default 300)"
            | Seed _ -> "seed of the fresh gate parameters (default 0)"
            | Gqa_Expand _ -> "heads (default) | rows (the reference's row repeat)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto)"
            | Resume -> "continue an interrupted conversion into --out after its last aligned layer"

/// What both convert and the ablation resolve from the command line before any work.
type Prepared =
    { Teacher: Teacher
      TeacherPath: string
      TokenizerPath: string
      Tokenizer: ITokenizer
      Kept: int list
      Batch: Calibration.CalibrationBatch
      Expand: GqaExpand
      EvalDocs: (string * string list) option }

/// Loads and validates the shared inputs (exit code 2 on any problem).
let prepare teacherPath (keep: string option) (policy: string option) (fraction: float option) calibText (evalText: string option)
            allowOverlap (expand: string option) : Prepared =
    let t = ModelFiles.loadTeacher teacherPath |> orFail
    // The gdn_v4 layer has no output bias (method.md §3): converting would silently drop the teacher's.
    if t.Config.OutputBias then
        usageError $"--teacher {teacherPath}: its attention has an o_proj bias (attention_bias = true); the gdn_v4 student has none, so it cannot be built from this teacher"
    // A non-finite weight would only surface as a NaN alignment loss deep in Phase 2; name where it is now.
    match TeacherWeights.firstNonFinite t.Weights with
    | Some(name, i, v) -> usageError $"--teacher {teacherPath}: tensor '{name}' holds {v} at flat index {i}; a teacher must have finite weights"
    | None -> ()
    let L = t.Config.Layers
    let kept =
        match keep, policy with
        | Some _, Some _ -> usageError "give either --keep or --policy, not both"
        | Some k, None -> LayerPolicy.parse "--keep" k |> orFail
        | None, Some "uniform" ->
            let f = defaultArg fraction 0.25
            // Written so that NaN fails too.
            if not (f > 0.0 && f < 1.0) then usageError $"--keep-fraction {f} must lie in (0, 1)"
            LayerPolicy.uniform L f
        | None, Some p -> usageError $"--policy {p}: supported policies: uniform"
        | None, None -> usageError "give the kept layers with --keep 0,3 or --policy uniform [--keep-fraction F]"
    let kept = LayerPolicy.validate "--keep" L kept |> orFail
    let expand =
        match expand with
        | None -> GqaExpand.Heads
        | Some e -> GqaExpand.parse e |> Option.defaultWith (fun () -> usageError $"--gqa-expand {e}: expected heads or rows")
    let tokPath = ModelFiles.tokenizerPathFor teacherPath t.Config.Vocab |> orFail
    let tok = ModelFiles.tokenizerFor teacherPath t.Config None |> orFail
    let calibDocs = readText calibText
    let evalDocs = evalText |> Option.map (fun p -> p, readText p)
    let opts = { Calibration.CalibrationOptions.defaults with AllowOverlap = allowOverlap }
    if opts.Length > t.Config.Context then usageError $"the calibration length {opts.Length} exceeds the teacher's context {t.Config.Context}"
    let batch = Calibration.build opts tok calibText calibDocs evalDocs |> orFail
    { Teacher = t; TeacherPath = teacherPath; TokenizerPath = tokPath; Tokenizer = tok; Kept = kept; Batch = batch
      Expand = expand; EvalDocs = evalDocs }

/// The settings a resumed run must share with the interrupted one.
/// The calibration enters by its content (the SHA-256 of the batch's token ids) and shape, not only its path:
/// an edited calibration file must not resume layers aligned on the old one.
let private settingsText (p: Prepared) (strategy: Convert.InitStrategy) (steps: int) (seed: int) =
    let tokensSha =
        Security.Cryptography.SHA256.HashData(Runtime.InteropServices.MemoryMarshal.AsBytes(ReadOnlySpan p.Batch.Tokens))
        |> System.Convert.ToHexString
    $"teacher={Path.GetFullPath p.TeacherPath}\nkept={p.Kept}\ninit={Convert.InitStrategy.name strategy}\nsteps={steps}\nseed={seed}\ngqa_expand={GqaExpand.name p.Expand}\ncalib={Path.GetFullPath p.Batch.Source}\ncalib_batch={p.Batch.B}x{p.Batch.T}\ncalib_tokens_sha256={tokensSha.ToLowerInvariant()}\n"

let run (args: ParseResults<Args>) =
    let strategy =
        let s = args.GetResult(Init, "taylor-calibrate")
        Convert.InitStrategy.parse s |> Option.defaultWith (fun () -> usageError $"--init {s}: expected naive, zero-gate, taylor-init, alignment-only or taylor-calibrate")
    let steps = args.GetResult(Steps, 300)
    if steps < 1 then usageError $"--steps {steps} must be at least 1"
    let seed = args.GetResult(Seed, 0)
    let out = args.GetResult Out |> nonEmptyPath "--out"
    let resume = args.Contains Resume
    let p =
        prepare (args.GetResult Teacher) (args.TryGetResult Keep) (args.TryGetResult Policy) (args.TryGetResult Keep_Fraction)
                (args.GetResult Calib_Text) (args.TryGetResult Eval_Text) (args.Contains Allow_Overlap) (args.TryGetResult Gqa_Expand)
    let settings = settingsText p strategy steps seed
    if File.Exists out then usageError $"--out {out} is a file"
    // Locked before anything is read from or written to it: a second writer fails here, naming the holder.
    use _lock = DirectoryLock.acquire out "convert" |> Result.defaultWith (fun e -> usageError $"--out {e}")
    if Directory.EnumerateFileSystemEntries(out) |> Seq.exists (DirectoryLock.isLockFile >> not) then
        match resume, AlignCheckpoint.readRun out with
        | false, _ -> usageError $"--out {out} exists and is not empty; choose another directory or pass --resume"
        | true, None -> usageError $"--resume: {out} holds no interrupted conversion (no align/run.json)"
        | true, Some previous when previous <> settings -> usageError $"--resume: {out} was started with other settings:\n{previous}"
        | true, Some _ -> ()
    // Said once the inputs are known good, and recorded in the report (calibration.overlap_checked = false).
    if p.EvalDocs.IsNone then
        eprintfn "warning: no --eval-text, so the calibration text was not checked for documents shared with an evaluation text"
    let c = p.Teacher.Config
    let converted = [ 0 .. c.Layers - 1 ] |> List.except p.Kept
    use be = openDevice (args.TryGetResult Device)
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
    AnsiConsole.MarkupLine("[bold]convert[/] " + Markup.Escape $"{p.TeacherPath} -> {out}: init {Convert.InitStrategy.name strategy}, kept {p.Kept}, converted {converted}, GQA {GqaExpand.name p.Expand}, device {be.Name}")
    try
        if Convert.InitStrategy.usesPhase2 strategy then AlignCheckpoint.writeRun out settings
        let student, reports, taylor =
            AnsiConsole.Progress()
                .AutoClear(false)
                .Columns(TaskDescriptionColumn(), ProgressBarColumn(), PercentageColumn(), ElapsedTimeColumn())
                .Start(fun ctx ->
                    let traceTask = ctx.AddTask("teacher trace", true, 1.0)
                    let trace = timed "teacher_trace" (fun () -> TeacherTrace.run dt p.Batch converted)
                    traceTask.Value <- 1.0
                    let diagTask = ctx.AddTask("Taylor diagnostic", true, float converted.Length)
                    let taylor =
                        timed "taylor_diagnostic" (fun () ->
                            converted |> List.map (fun i ->
                                let r = TaylorDiagnostic.run c p.Teacher.Weights.Layers[i] trace.Layers[i] trace.B trace.T
                                diagTask.Increment 1.0
                                i, r) |> Map.ofList)
                    let layerTasks =
                        converted |> List.map (fun i ->
                            let t = ctx.AddTask($"layer {i}", true, (if Convert.InitStrategy.usesPhase2 strategy then float steps else 1.0))
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
                    let o = { Convert.ConvertOptions.defaults strategy with Expand = p.Expand; Seed = seed; Align = { Align.AlignOptions.defaults with Steps = steps } }
                    let student, reports = timed "convert" (fun () -> Convert.run be p.Teacher trace p.Kept o hooks cts.Token)
                    for KeyValue(_, t) in layerTasks do t.Value <- t.MaxValue
                    student, reports, taylor)
        timed "save" (fun () -> StudentIo.save out student (Some p.TokenizerPath))
        timings.Add("total", total.Elapsed.TotalSeconds)
        let report : ConvertReport.Report =
            { Teacher = p.TeacherPath; Init = Convert.InitStrategy.name strategy; Kept = p.Kept; GqaExpand = GqaExpand.name p.Expand
              Seed = seed; Steps = steps; Calibration = p.Batch
              Layers = reports |> List.map (fun r -> { Convert = r; Taylor = taylor.TryFind r.Layer })
              Timings = List.ofSeq timings; Device = be.Name }
        AtomicFile.writeText (Path.Combine(out, "report.json")) (ConvertReport.toJson report)
        AtomicFile.writeText (Path.Combine(out, "report.html")) (ReportHtml.convertPage report)
        for r in reports do
            let align = match r.Alignment with Some a -> $", alignment loss {a.Losses[0]:G4} -> {a.BestLoss:G4} (step {a.BestStep}, {a.Seconds:F1} s)" | None -> ""
            printfn "layer %d: MSE %.4g, cosine flattened %.4f, mean per-token %.4f%s" r.Layer r.Fit.Mse r.Fit.Cosine r.Fit.MeanTokenCosine align
        printfn "wrote %s (student, report.json, report.html) in %.1f s" out total.Elapsed.TotalSeconds
        0
    with :? OperationCanceledException ->
        raise (Interrupted(if Convert.InitStrategy.usesPhase2 strategy then Some(commandLineWith "--resume") else None))
