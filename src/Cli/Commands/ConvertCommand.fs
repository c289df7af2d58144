/// `taylor-calibrate convert`: teacher → calibrated hybrid student directory (docs/method.md §5). The options
/// become a ConvertJob request; ConvertJob (Pipeline) checks the inputs, takes the output directory, runs the
/// stages and writes the report; this command shows progress per stage and per layer and prints the results.
/// Under mpirun/srun the converted layers are sharded over the ranks (ConvertJob.runRanked): rank 0 reports
/// and writes the student, the others align their share silently and fail loudly.
module TaylorCalibrate.Cli.ConvertCommand

open System
open System.IO
open System.Threading
open Argu
open Spectre.Console
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Cli.Common

type Args =
    | [<Mandatory>] Teacher of path: string
    | Keep of layers: string
    | Policy of name: string
    | Keep_Fraction of f: float
    | Keep_From of path: string
    | Init of strategy: string
    | Calib_Text of path: string
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
            | Calib_Text _ -> "calibration text (documents separated by <|endoftext|>); naive and zero-gate need none"
            | Calib_Tokens _ -> "calibration tokens read, a multiple of 256 (default 1024 for the published strategies; 20480 for calibrate-plus, its held-out part included)"
            | Calib_Dev_Tokens _ -> "of --calib-tokens, the tokens from the end of --calib-text calibrate-plus holds out for selection (default a quarter, at most 4096)"
            | Eval_Text _ -> "evaluation text the calibration text must not overlap (checked by document)"
            | Allow_Overlap -> "accept calibration documents that also occur in --eval-text"
            | Out _ -> "output student directory"
            | Steps _ -> "alignment steps per layer (default 300; calibrate-plus: at most 600, early-stopped on held-out text)"
            | Seed _ -> "seed of the fresh gate parameters (default 0)"
            | Gqa_Expand _ -> "heads (default) | rows (the reference's row repeat)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto); a list such as vulkan:0,vulkan:1 or cpu:0,cpu:1 spreads the converted layers over those devices"
            | Resume -> "continue an interrupted conversion into --out after its last aligned layer"

/// The loaded, checked inputs of a conversion (ConvertJob.Prepared).
type Prepared = ConvertJob.Prepared

let calibChunk = ConvertJob.calibChunk
let defaultCalibTokens = ConvertJob.defaultCalibTokens
let defaultDevTokens = ConvertJob.defaultDevTokens

/// Checks --calib-tokens (exit code 2 if not a positive multiple of the chunk length).
let checkCalibTokens (n: int) = ConvertJob.checkCalibTokens n |> orFail

/// Fit and dev batches of n calibration tokens with devTokens held out.
let split (p: Prepared) (n: int) (devTokens: int) = ConvertJob.split p n devTokens |> orFail

/// The kept layers of --keep, --policy [--keep-fraction] or --keep-from (exactly one of them).
let private keptLayers (keepFrom: string option) (keep: string option) (policy: string option) (fraction: float option) =
    match keep, policy, keepFrom with
    | _, _, Some file ->
        if keep.IsSome || policy.IsSome || fraction.IsSome then usageError "--keep-from: give one of --keep, --policy [--keep-fraction] or --keep-from"
        ConvertJob.FromSelection file
    | Some _, Some _, None -> usageError "give either --keep or --policy, not both"
    | Some k, None, None ->
        if fraction.IsSome then usageError "--keep-fraction goes with --policy uniform, not --keep"
        ConvertJob.Layers(LayerPolicy.parse "--keep" k |> orFail)
    | None, Some "uniform", None -> ConvertJob.Uniform(defaultArg fraction 0.25)
    | None, Some p, None -> usageError $"--policy {p}: supported policies: uniform (select-layers writes ar and ga-s2 files for --keep-from)"
    | None, None, None -> usageError "give the kept layers with --keep 0,3, --policy uniform [--keep-fraction F] or --keep-from FILE.json"

let private gqaExpand (expand: string option) =
    match expand with
    | None -> GqaExpand.Heads
    | Some e -> GqaExpand.parse e |> Option.defaultWith (fun () -> usageError $"--gqa-expand {e}: expected heads or rows")

/// Prints the warnings of prepared inputs on stderr.
let private warn (p: Prepared) = for w in p.Warnings do eprintfn "warning: %s" w

/// Loads and validates inputs shared with the ablation (exit code 2 on any problem); `keepFrom` is a select-layers file.
let prepareWith (keepFrom: string option) teacherPath (keep: string option) (policy: string option) (fraction: float option) calibText
                (evalText: string option) allowOverlap (expand: string option) (calibTokens: int) (devTokens: int) : Prepared =
    let request =
        { ConvertJob.Request.defaults teacherPath (keptLayers keepFrom keep policy fraction) Convert.InitStrategy.TaylorCalibrate (Some calibText) with
            CalibTokens = Some calibTokens; DevTokens = Some devTokens; EvalText = evalText; AllowOverlap = allowOverlap; Expand = gqaExpand expand }
    let p = ConvertJob.prepare request |> orFail
    warn p
    p

/// prepareWith without a selection file.
let prepare teacherPath keep policy fraction calibText evalText allowOverlap expand calibTokens devTokens =
    prepareWith None teacherPath keep policy fraction calibText evalText allowOverlap expand calibTokens devTokens

/// Runs the conversion with a progress bar per stage and per converted layer.
let private runWithProgress (ranks: Mpi.ICollectives) (workers: DeviceWorkers) (p: Prepared) (output: ConvertJob.Output) (ct: CancellationToken) =
    AnsiConsole.Progress()
        .AutoClear(false)
        .Columns(TaskDescriptionColumn(), ProgressBarColumn(), PercentageColumn(), ElapsedTimeColumn())
        .Start(fun ctx ->
            let traced = p.Calibration.IsSome
            let traceTask = if traced then Some(ctx.AddTask("teacher trace", true, 1.0)) else None
            let diagTask = if traced then Some(ctx.AddTask("Taylor diagnostic", true, float p.Converted.Length)) else None
            let aligns = Convert.InitStrategy.aligns p.Strategy
            let layerTasks =
                p.Converted |> List.map (fun i ->
                    let t = ctx.AddTask($"layer {i}", true, (if aligns then float p.Steps else 1.0))
                    if output.Restored.ContainsKey i then
                        t.Description <- $"layer {i} restored"
                        t.Value <- t.MaxValue
                    i, t) |> Map.ofList
            let finishBefore i = for KeyValue(j, t) in layerTasks do if j < i then t.Value <- t.MaxValue
            let onEvent e =
                match e with
                | ConvertJob.Tracing -> ()
                | ConvertJob.Traced -> traceTask |> Option.iter (fun t -> t.Value <- 1.0)
                | ConvertJob.Diagnosed _ -> diagTask |> Option.iter (fun t -> t.Increment 1.0)
                | ConvertJob.LayerStarted i -> finishBefore i
                | ConvertJob.Aligning(i, s, loss) ->
                    let t = layerTasks[i]
                    t.Value <- float s
                    t.Description <- $"layer {i} loss {loss:G4}"
                | ConvertJob.LayersDone -> for KeyValue(_, t) in layerTasks do t.Value <- t.MaxValue
            (ConvertJob.runRanked ranks workers.Workers p output onEvent ct).Value)

let private runOn (world: Mpi.MpiWorld option) (args: ParseResults<Args>) =
    let strategy =
        let s = args.GetResult(Init, "taylor-calibrate")
        Convert.InitStrategy.parse s |> Option.defaultWith (fun () -> usageError $"--init {s}: expected naive, zero-gate, taylor-init, alignment-only, taylor-calibrate or calibrate-plus")
    let request : ConvertJob.Request =
        { Teacher = args.GetResult Teacher
          Kept = keptLayers (args.TryGetResult Keep_From) (args.TryGetResult Keep) (args.TryGetResult Policy) (args.TryGetResult Keep_Fraction)
          Strategy = strategy
          CalibText = args.TryGetResult Calib_Text
          CalibTokens = args.TryGetResult Calib_Tokens
          DevTokens = args.TryGetResult Calib_Dev_Tokens
          EvalText = args.TryGetResult Eval_Text
          AllowOverlap = args.Contains Allow_Overlap
          Expand = gqaExpand (args.TryGetResult Gqa_Expand)
          Steps = args.TryGetResult Steps
          Seed = args.GetResult(Seed, 0) }
    let ranks = match world with Some w -> w :> Mpi.ICollectives | None -> Mpi.SingleRank.Instance
    let p = ConvertJob.prepare request |> orFail
    // The device is a checked input too: opened before the output directory is touched. Under MPI each rank
    // takes its own entry of a --device list (openRankDevice).
    use workers =
        match world with
        | None -> openWorkers (args.TryGetResult Device)
        | Some _ -> let be = openRankDevice world (args.TryGetResult Device) in new DeviceWorkers([ DeviceWorker(be.Name, be) ])
    let resume = args.Contains Resume
    use output = ConvertJob.takeOutputRanked ranks p (args.GetResult Out) resume |> orFail
    let out = output.Directory
    use cts = new CancellationTokenSource()
    let onCancel = ConsoleCancelEventHandler(fun _ e -> e.Cancel <- true; cts.Cancel())
    Console.CancelKeyPress.AddHandler onCancel
    use _cancelHandler = { new IDisposable with member _.Dispose() = Console.CancelKeyPress.RemoveHandler onCancel }
    if ranks.Rank <> 0 then
        ConvertJob.runRanked ranks workers.Workers p output ignore cts.Token |> ignore
        0
    else
    warn p
    if resume then
        for w in output.Warnings do eprintfn "warning: %s" w
        let layers = output.Restored |> Map.toList |> List.map fst
        printfn "resuming %s: layers %s restored from %s" out (if layers.IsEmpty then "none" else String.Join(", ", layers)) (Path.Combine(out, "align"))
    let ranksText = if ranks.Size > 1 then $", {ranks.Size} MPI ranks" else ""
    AnsiConsole.MarkupLine("[bold]convert[/] " + Markup.Escape $"{p.TeacherPath} -> {out}: init {Convert.InitStrategy.name strategy}, kept {p.Kept}, converted {p.Converted}, GQA {GqaExpand.name p.Expand}, device {workers.Name}{ranksText}")
    try
        let outcome = runWithProgress ranks workers p output cts.Token
        if outcome.Report.Calibration.IsNone then
            printfn "%s: the student comes from the teacher's weights alone (no calibration text, so no layer fit was measured)" (Convert.InitStrategy.name strategy)
        for e in outcome.Report.Layers do
            let r = e.Convert
            let align = match r.Alignment with Some a -> $", alignment loss {a.Losses[0]:G4} -> {a.BestLoss:G4} (step {a.BestStep}, {a.Seconds:F1} s)" | None -> ""
            printfn "layer %d: MSE %.4g, cosine flattened %.4f, mean per-token %.4f%s" r.Layer r.Fit.Mse r.Fit.Cosine r.Fit.MeanTokenCosine align
        let seconds = outcome.Report.Timings |> List.tryFind (fst >> (=) "total") |> Option.map snd |> Option.defaultValue 0.0
        printfn "wrote %s (student, report.json, report.html) in %.1f s" out seconds
        0
    with
    | :? OperationCanceledException ->
        raise (Interrupted(if output.Kept then Some(commandLineWith "--resume") else None))
    | Parallel.LayerScheduler.JobsFailedException(message, _) ->
        // Several devices: the other layers finished and (when aligned) were persisted under --out/align.
        eprintfn "error: %s" message
        if output.Kept then eprintfn "the aligned layers are kept; continue with: %s" (commandLineWith "--resume")
        1

let run (args: ParseResults<Args>) =
    let world = startMpi ()
    onEveryRank world (fun () -> runOn world args)
