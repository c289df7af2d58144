/// `taylor-calibrate distill --stage 1|2`: Stage-1 or Stage-2 distillation of a student directory against
/// its teacher (Pipeline/Distill/Distill.fs), with a progress bar (tokens/s, loss, ETA), a line per
/// checkpoint, and the distilled student, its checkpoints and the learning curve under --out. Started by an
/// MPI launcher (`mpirun -np N taylor-calibrate distill --stage 2 ...`), every rank trains on its share of each
/// global batch and rank 0 reports and writes (Distill.runRanked).
module TaylorCalibrate.Cli.DistillCommand

open System
open System.Threading
open Argu
open Spectre.Console
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Mpi
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Cli.Common

type Args =
    | [<Mandatory>] Stage of n: int
    | [<Mandatory>] Student of dir: string
    | [<Mandatory>] Teacher of path: string
    | [<Mandatory>] Train_Text of paths: string list
    | [<Mandatory>] Tokens of n: int64
    | Seq_Len of t: int
    | Batch of b: int
    | Accum of a: int
    | Checkpoint_Every of tokens: int64
    | Eval_Text of path: string
    | Eval_Max_Tokens of n: int
    | Seed of s: int
    | Lr of lr: float32
    | Lr_Attn of lr: float32
    | Lr_Rest of lr: float32
    | Recompute
    | [<Mandatory>] Out of dir: string
    | Resume
    | Device of device: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Stage _ -> "1 (per-layer, teacher-forced, GDN parameters only) or 2 (end-to-end KL, every parameter)"
            | Student _ -> "student directory (written by convert or by an earlier distill)"
            | Teacher _ -> "the teacher the student was converted from"
            | Train_Text _ -> "training texts (documents separated by <|endoftext|>); never the held-out text"
            | Tokens _ -> "training tokens (rounded down to whole steps)"
            | Seq_Len _ -> "tokens per row (default 256, at most the context)"
            | Batch _ -> "rows per micro-batch (default 8)"
            | Accum _ -> "micro-batches per step (default 1)"
            | Checkpoint_Every _ -> "tokens between checkpoints and held-out evaluations (default tokens/10)"
            | Eval_Text _ -> "held-out text: perplexity at every checkpoint (must share no document with the training or calibration text)"
            | Eval_Max_Tokens _ -> "evaluate at most this many held-out tokens"
            | Seed _ -> "seed of the training stream's document order (default 0)"
            | Lr _ -> "Stage 1 peak learning rate (default 1e-3, cosine to 0)"
            | Lr_Attn _ -> "Stage 2 rate of parameters whose name contains \"attn\" (default 1e-4)"
            | Lr_Rest _ -> "Stage 2 rate of the other parameters (default 7e-6)"
            | Recompute -> "Stage 2: rebuild activations in the backward (less memory, same result)"
            | Out _ -> "output directory: distilled student, checkpoints/, curve.json, curve.svg, distill.json"
            | Resume -> "continue the run in --out from its latest checkpoint (exactly)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto); a list (vulkan:0,vulkan:1, cpu:0,cpu:1, mixed) spreads Stage 1's layers over the devices; under mpirun a list, one entry per rank of a node"

/// A learning rate option: finite and not negative (NaN and ±Inf parse as floats but mean nothing here).
let private rate (option: string) (v: float32) : float32 =
    if not (Single.IsFinite v) || v < 0f then usageError $"{option} {v}: expected a finite learning rate ≥ 0"
    v

let private runOn (world: MpiWorld option) (args: ParseResults<Args>) =
    let tokens = args.GetResult Tokens
    let stage =
        match args.GetResult Stage with
        | 1 ->
            if args.Contains Lr_Attn || args.Contains Lr_Rest then usageError "--lr-attn and --lr-rest are Stage-2 rates; Stage 1 takes --lr"
            match Distill.Stage.stage1Default with
            | Distill.Stage1 lr -> Distill.Stage1(args.GetResult(Lr, lr) |> rate "--lr")
            | other -> other
        | 2 ->
            if args.Contains Lr then usageError "--lr is the Stage-1 rate; Stage 2 takes --lr-attn and --lr-rest"
            match Distill.Stage.stage2Default with
            | Distill.Stage2(attn, rest) -> Distill.Stage2(args.GetResult(Lr_Attn, attn) |> rate "--lr-attn", args.GetResult(Lr_Rest, rest) |> rate "--lr-rest")
            | other -> other
        | n -> usageError $"--stage {n}: expected 1 or 2"
    if tokens < 1L then usageError $"--tokens {tokens} must be positive"
    let seed = args.GetResult(Seed, 0)
    if seed < 0 then usageError $"--seed {seed} must be ≥ 0"
    let out = args.GetResult Out
    if IO.File.Exists out then usageError $"--out {out} is a file"
    let sources : DistillInputs.DistillSources =
        { StudentDir = args.GetResult Student; TeacherPath = args.GetResult Teacher; TrainTexts = args.GetResult Train_Text
          EvalText = args.TryGetResult Eval_Text; SeqLen = args.GetResult(Seq_Len, 256); Seed = uint64 seed
          EvalMaxTokens = args.TryGetResult Eval_Max_Tokens }
    let inputs = DistillInputs.load sources |> orFail
    for text in sources.TrainTexts @ Option.toList sources.EvalText do warnIfNotCleanText text
    let options =
        { Distill.DistillOptions.defaults stage tokens with
            Batch = args.GetResult(Batch, 8); Accum = args.GetResult(Accum, 1)
            CheckpointEvery = args.GetResult(Checkpoint_Every, max 1L (tokens / 10L))
            Recompute = args.Contains Recompute; Resume = args.Contains Resume }
    // Without MPI a --device list spreads Stage 1's layers over its devices; under mpirun each rank takes one.
    use devices =
        match world with
        | None -> openWorkers (args.TryGetResult Device)
        | Some _ ->
            let be = openRankDevice world (args.TryGetResult Device)
            new DeviceWorkers([ DeviceWorker(be.Name, be) ])
    let be = devices.First
    let ranks = match world with Some w -> w :> ICollectives | None -> SingleRank.Instance
    use cts = new CancellationTokenSource()
    let train progress =
        match world with
        | None -> Distill.runOn devices.Workers inputs options out progress cts.Token
        | Some _ -> Distill.runRanked ranks be inputs options out progress cts.Token
    let onCancel = ConsoleCancelEventHandler(fun _ e -> e.Cancel <- true; cts.Cancel())
    Console.CancelKeyPress.AddHandler onCancel
    let n = Distill.Stage.number stage
    let ranksText = if ranks.Size > 1 then $", {ranks.Size} MPI ranks" else ""
    if ranks.Rank = 0 then
        AnsiConsole.MarkupLine(
            "[bold]distill[/] " + Markup.Escape $"stage {n}: {sources.StudentDir} against {sources.TeacherPath} -> {out}; {inputs.Train.Tokens} training tokens in {inputs.Train.Documents} documents, device {devices.Name}{ranksText}")
    try
      try
        if ranks.Rank <> 0 then
            // Rank 0 reports; the others train silently and fail loudly.
            let silent = { new IProgress<Distill.DistillProgress> with member _.Report _ = () }
            train silent |> orFail |> ignore
            0
        else
        let result =
            AnsiConsole.Progress()
                .AutoClear(false)
                .Columns(TaskDescriptionColumn(), ProgressBarColumn(), PercentageColumn(), RemainingTimeColumn())
                .Start(fun ctx ->
                    let task = ctx.AddTask($"stage {n}", true, 1.0)
                    let progress =
                        { new IProgress<Distill.DistillProgress> with
                            member _.Report p =
                                match p with
                                | Distill.Started(from, steps, _) ->
                                    task.MaxValue <- float steps
                                    task.Value <- float from
                                | Distill.Stepped(s, steps, seen, loss, tps) ->
                                    task.Value <- float s
                                    task.Description <- $"stage {n}: step {s}/{steps}, {seen} tokens, {tps:F0} tokens/s, loss {loss:G4}"
                                | Distill.Evaluating s -> task.Description <- $"stage {n}: step {s}, evaluating"
                                | Distill.Checkpointed(pt, dir) ->
                                    AnsiConsole.MarkupLine(Markup.Escape $"checkpoint {IO.Path.GetFileName dir}: {pt.Tokens} tokens, loss {pt.Loss:G4}, held-out PPL {pt.Perplexity:F3}, KL {pt.HeldOutKl:G4}")
                                | Distill.Warning w -> AnsiConsole.MarkupLine("[yellow]warning:[/] " + Markup.Escape w) }
                    train progress)
            |> orFail
        let c = result.Curve
        let first, last = List.head c.Points, List.last c.Points
        printfn "teacher PPL %.3f; student PPL %.3f at 0 tokens -> %.3f at %d tokens" c.TeacherPerplexity first.Perplexity last.Perplexity last.Tokens
        if result.StepsRun > 0 then
            printfn "training: %.0f tokens/s (%s), %.3f GFLOP/s model rate (%.3g FLOP/token)"
                result.TokensPerSecond (if n = 2 then "teacher forward included" else "teacher trace included")
                (result.TokensPerSecond * result.FlopsPerToken / 1e9) result.FlopsPerToken
        if ranks.Size > 1 && result.StepsRun > 0 then
            let trainSeconds = float (int64 result.StepsRun * result.TokensPerStep) / result.TokensPerSecond
            printfn "gradient sum over %d ranks: %.4f s per step of %.4f s (%.1f %%)" ranks.Size (result.AllreduceSeconds / float result.StepsRun)
                (trainSeconds / float result.StepsRun) (100.0 * result.AllreduceSeconds / trainSeconds)
        printfn "wrote %s (student, checkpoints/, curve.json, curve.svg, distill.json)" out
        0
      with :? OperationCanceledException ->
        eprintfn "interrupted; continue from the last checkpoint with the same options and --resume"
        130
    finally
        Console.CancelKeyPress.RemoveHandler onCancel

let run (args: ParseResults<Args>) =
    let world = startMpi ()
    onEveryRank world (fun () -> runOn world args)
