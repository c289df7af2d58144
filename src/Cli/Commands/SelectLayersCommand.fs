/// `taylor-calibrate select-layers --teacher MODEL --policy uniform|ar|ga-s2 (--keep K | --keep-fraction F)
/// --eval-text FILE [--init I --calib-text FILE] --out FILE.json`: which layers keep softmax attention
/// (Stages/LayerSelection.fs, docs/method.md §6), with a progress bar, a score table, and the selection file that
/// `convert --keep-from` reads. Every option is checked before the teacher is evaluated.
module TaylorCalibrate.Cli.SelectLayersCommand

open System
open System.IO
open System.Threading
open Argu
open Spectre.Console
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Cli.Common

type Args =
    | [<Mandatory>] Teacher of path: string
    | [<Mandatory>] Policy of name: string
    | Keep of k: int
    | Keep_Fraction of f: float
    | Eval_Text of path: string
    | Init of strategy: string
    | Calib_Text of path: string
    | Allow_Overlap
    | Steps of n: int
    | Seed of s: int
    | Gqa_Expand of mode: string
    | Window of tokens: int
    | Max_Tokens of n: int
    | Device of device: string
    | [<Mandatory>] Out of path: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Teacher _ -> "teacher model: Hugging Face directory or llama2.c .bin"
            | Policy _ -> "uniform (every L/k-th layer) | ar (attention-removal PPL increase) | ga-s2 (zero-shot PPL of one-layer hybrids)"
            | Keep _ -> "number of layers to keep, 1..L"
            | Keep_Fraction _ -> "fraction of layers to keep, in (0, 1]: k = max(1, round(f·L))"
            | Eval_Text _ -> "evaluation text of ar and ga-s2 (fixed window protocol; not used by uniform)"
            | Init _ -> "ga-s2 only: init of the one-layer hybrids, naive | zero-gate | taylor-init | alignment-only | taylor-calibrate (default taylor-calibrate)"
            | Calib_Text _ -> "ga-s2 only: calibration text of the init (disjoint from --eval-text); needed by all inits but naive and zero-gate"
            | Allow_Overlap -> "accept calibration documents that also occur in --eval-text"
            | Steps _ -> "ga-s2: Phase 2 steps per layer (default 300)"
            | Seed _ -> "ga-s2: seed of the fresh gate parameters (default 0)"
            | Gqa_Expand _ -> "ga-s2: heads (default) | rows"
            | Window _ -> "evaluation window (default min(2048, context))"
            | Max_Tokens _ -> "evaluate only the first N tokens of --eval-text"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto); a list (vulkan:0,vulkan:1, cpu:0,cpu:1, mixed) spreads the per-layer measurements over the devices"
            | Out _ -> "the selection file to write (JSON), read by `convert --keep-from`"

/// Runs the stage under a progress bar.
let private runWithProgress (workers: DeviceWorkers) (input: LayerSelection.SelectionInput) (ct: CancellationToken) =
    match input.Plan with
    | LayerSelection.Plan.Uniform -> LayerSelection.runOn workers.Workers input None ct
    | _ ->
        AnsiConsole.Progress()
            .AutoClear(true)
            .Columns(TaskDescriptionColumn(), ProgressBarColumn(), PercentageColumn(), ElapsedTimeColumn(), RemainingTimeColumn())
            .Start(fun ctx ->
                let task = ctx.AddTask("select", true, 1.0)
                let progress =
                    { new IProgress<LayerSelection.SelectionProgress> with
                        member _.Report p =
                            task.MaxValue <- float p.Total
                            task.Value <- p.Done
                            task.Description <- Markup.Escape p.Current }
                LayerSelection.runOn workers.Workers input (Some progress) ct)

let run (args: ParseResults<Args>) =
    let teacherPath = args.GetResult Teacher
    let out = args.GetResult Out
    let init =
        args.TryGetResult Init |> Option.map (fun s ->
            Convert.InitStrategy.parse s
            |> Option.defaultWith (fun () -> usageError $"--init {s}: expected naive, zero-gate, taylor-init, alignment-only or taylor-calibrate"))
    let policy = LayerSelection.Policy.parse (args.GetResult Policy) init |> orFail
    let keep =
        match args.TryGetResult Keep, args.TryGetResult Keep_Fraction with
        | Some _, Some _ -> usageError "give either --keep K or --keep-fraction F, not both"
        | None, None -> usageError "give the number of kept layers with --keep K or --keep-fraction F"
        | Some k, None -> LayerSelection.Count k
        | None, Some f -> LayerSelection.Fraction f
    // Range checks that need no teacher come first (the teacher may take long to load).
    match keep with
    | LayerSelection.Count k when k < 1 -> usageError $"--keep {k} must be at least 1"
    | LayerSelection.Fraction f when Double.IsNaN f || f <= 0.0 || f > 1.0 -> usageError $"--keep-fraction {f} must lie in (0, 1]"
    | _ -> ()
    let isGaS2 = match policy with LayerSelection.Policy.GaS2 _ -> true | _ -> false
    let evalText = args.TryGetResult Eval_Text
    let calibText = args.TryGetResult Calib_Text
    if policy <> LayerSelection.Policy.Uniform && evalText.IsNone then
        usageError $"--policy {LayerSelection.Policy.name policy} measures perplexity: give --eval-text FILE"
    if not isGaS2 then
        for present, name in [ calibText.IsSome, "--calib-text"; args.Contains Steps, "--steps"; args.Contains Seed, "--seed"; args.Contains Gqa_Expand, "--gqa-expand" ] do
            if present then usageError $"{name} applies to --policy ga-s2 only"
    if LayerSelection.Policy.needsCalibration policy && calibText.IsNone then
        let i = LayerSelection.Policy.init policy |> Option.map Convert.InitStrategy.name |> Option.defaultValue "?"
        usageError $"--calib-text: --policy ga-s2 with --init {i} calibrates on a teacher trace; give a calibration text disjoint from --eval-text (or use --init naive)"
    let steps = args.GetResult(Steps, 300)
    if steps < 1 then usageError $"--steps {steps} must be at least 1"
    if Directory.Exists out then usageError $"--out {out} is a directory; give the selection file to write"
    let t = ModelFiles.loadTeacher teacherPath |> orFail
    let L = t.Config.Layers
    let k = LayerSelection.KeepCount.resolve L keep |> orFail
    let evalInput () =
        let path = evalText.Value
        let tok = ModelFiles.tokenizerFor teacherPath t.Config None |> orFail
        let docs = readText path
        let stream = Corpus.tokenStreamUpTo tok (args.TryGetResult Max_Tokens) docs
        let set = Perplexity.prepare path t.Config stream (args.TryGetResult Window) (args.TryGetResult Max_Tokens) |> orFail
        ({ Source = path; Set = set } : LayerSelection.EvalInput), tok, docs
    let plan =
        match policy with
        | LayerSelection.Policy.Uniform -> LayerSelection.Plan.Uniform
        | LayerSelection.Policy.Ar -> LayerSelection.Plan.Ar(let e, _, _ = evalInput () in e)
        | LayerSelection.Policy.GaS2 strategy ->
            let e, tok, evalDocs = evalInput ()
            if t.Config.OutputBias then
                usageError $"--teacher {teacherPath}: its attention has an o_proj bias (attention_bias = true); the gdn_v4 layers of ga-s2's hybrids have none"
            let expand =
                match args.TryGetResult Gqa_Expand with
                | None -> GqaExpand.Heads
                | Some g -> GqaExpand.parse g |> Option.defaultWith (fun () -> usageError $"--gqa-expand {g}: expected heads or rows")
            let batch =
                calibText |> Option.map (fun path ->
                    let opts = { Calibration.CalibrationOptions.defaults with AllowOverlap = args.Contains Allow_Overlap }
                    if opts.Length > t.Config.Context then usageError $"the calibration length {opts.Length} exceeds the teacher's context {t.Config.Context}"
                    let docs = readText path
                    Calibration.build opts tok path docs (Some(e.Source, evalDocs)) |> orFail)
            let options =
                { Convert.ConvertOptions.defaults strategy with
                    Expand = expand; Seed = args.GetResult(Seed, 0); Align = { Align.AlignOptions.defaults with Steps = steps } }
            LayerSelection.Plan.GaS2(e, LayerSelection.GaS2Setup.create options batch |> orFail)
    let input : LayerSelection.SelectionInput = { Teacher = t; TeacherPath = teacherPath; K = k; Plan = plan }
    use workers = openWorkers (args.TryGetResult Device)
    use cts = new CancellationTokenSource()
    let onCancel = ConsoleCancelEventHandler(fun _ e -> e.Cancel <- true; cts.Cancel())
    Console.CancelKeyPress.AddHandler onCancel
    let initText = match LayerSelection.Policy.init policy with Some i -> $", init {Convert.InitStrategy.name i}" | None -> ""
    AnsiConsole.MarkupLine("[bold]select-layers[/] " + Markup.Escape $"{teacherPath}: policy {LayerSelection.Policy.name policy}{initText}, keep {k} of {L}, device {workers.Name}")
    let s =
        try runWithProgress workers input cts.Token
        finally Console.CancelKeyPress.RemoveHandler onCancel
    match s.Measured with
    | None -> ()
    | Some m ->
        printfn "evaluation  %s: %d windows x %d tokens; teacher PPL %.4f" m.EvalText m.Windows m.Window m.TeacherPerplexity
        let table = Table()
        table.AddColumn "layer" |> ignore
        table.AddColumn(if policy = LayerSelection.Policy.Ar then "PPL without its attention" else "PPL keeping only it") |> ignore
        if policy = LayerSelection.Policy.Ar then table.AddColumn "increase" |> ignore
        table.AddColumn "kept" |> ignore
        for r in m.Scores do
            let kept = if List.contains r.Layer s.Kept then "yes" else ""
            let cells = [ string r.Layer; $"{r.Perplexity:F4}" ] @ (if policy = LayerSelection.Policy.Ar then [ $"{r.Score:F4}" ] else []) @ [ kept ]
            table.AddRow(Array.ofList cells) |> ignore
        AnsiConsole.Write table
    LayerSelectionFile.write out s
    let kept = String.Join(",", s.Kept)
    printfn "kept layers %s (%d of %d) in %.1f s" kept s.K s.Layers s.Seconds
    printfn "wrote %s" out
    0
