/// `taylor-calibrate experiment ablation`: the paper's zero-shot ablation (docs/method.md §9) on one teacher:
/// teacher PPL and the zero-shot PPL of the init strategies (the paper's five and calibrate-plus) on held-out
/// text (fixed-window protocol of Eval/Perplexity.fs), over --seeds fresh-gate seeds (mean ± sd) and,
/// optionally, a sweep of calibration budgets; each row also gives the conversion's wall time.
/// Writes DIR/ablation.md, DIR/ablation.json and DIR/ablation.html, each atomically.
/// `experiment token-budget` (Pipeline/Stages/TokenBudget.fs) and `experiment study` (Pipeline/Stages/Study.fs)
/// only parse their options here and print what the pipeline reports.
module TaylorCalibrate.Cli.ExperimentCommand

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open System.Threading
open Argu
open Spectre.Console
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Report
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Cli.Common

type AblationArgs =
    | [<Mandatory>] Teacher of path: string
    | Keep of layers: string
    | Policy of name: string
    | Keep_Fraction of f: float
    | [<Mandatory>] Calib_Text of path: string
    | [<Mandatory>] Eval_Text of path: string
    | Allow_Overlap
    | Seeds of n: int
    | Steps of n: int
    | Strategies of names: string
    | Calib_Tokens of list: string
    | Calib_Dev_Tokens of n: int
    | Gqa_Expand of mode: string
    | Window of tokens: int
    | Max_Tokens of n: int
    | Device of device: string
    | [<Mandatory>] Out of dir: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Teacher _ -> "teacher model: Hugging Face directory or llama2.c .bin"
            | Keep _ -> "comma-separated kept layers, e.g. 0,3"
            | Policy _ -> "kept-layer policy instead of --keep: uniform"
            | Keep_Fraction _ -> "fraction of layers kept by --policy (default 0.25)"
            | Calib_Text _ -> "calibration text"
            | Eval_Text _ -> "held-out evaluation text (must not overlap the calibration text)"
            | Allow_Overlap -> "accept calibration documents that also occur in --eval-text"
            | Seeds _ -> "number of fresh-gate seeds (0..N-1) to average (default 1)"
            | Steps _ -> "alignment steps per layer (default: each strategy's, 300 for the published ones)"
            | Strategies _ -> "comma-separated strategies to run (default all: the published five and calibrate-plus)"
            | Calib_Tokens _ -> "comma-separated calibration budgets (multiples of 256, every token read: calibrate-plus's held-out part included) to sweep; default each strategy's own"
            | Calib_Dev_Tokens _ -> "of each budget, the tokens calibrate-plus holds out for selection (default a quarter, at most 4096)"
            | Gqa_Expand _ -> "heads (default) | rows"
            | Window _ -> "evaluation window (default min(2048, context))"
            | Max_Tokens _ -> "evaluate only the first N tokens"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME"
            | Out _ -> "output directory for ablation.md, ablation.json, ablation.html"

type TokenBudgetArgs =
    | [<Mandatory>] Teacher of path: string
    | [<Mandatory>] Policy of name: string
    | Keep_Fraction of f: float
    | [<Mandatory>] Tokens of n: int64
    | [<Mandatory>] Checkpoint_Every of n: int64
    | [<Mandatory>] Calib_Text of path: string
    | [<Mandatory>] Train_Text of path: string
    | [<Mandatory>] Eval_Text of path: string
    | [<Mandatory>] Out of dir: string
    | Seeds of n: int
    | Stage_Split of split: string
    | Stage1_Lr of lr: float32
    | Lr_Attn of lr: float32
    | Lr_Rest of lr: float32
    | Seq_Len of n: int
    | Batch of n: int
    | Align_Steps of n: int
    | Eval_Max_Tokens of n: int
    | Selection_Tokens of n: int
    | Device of device: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Teacher _ -> "teacher model: Hugging Face directory or llama2.c .bin"
            | Policy _ -> "kept-layer policy: uniform | ar | ga-s2 (ar and ga-s2 score layers on the training text)"
            | Keep_Fraction _ -> "fraction of layers that keep softmax attention (default 0.25)"
            | Tokens _ -> "Stage-1 + Stage-2 training tokens per student"
            | Checkpoint_Every _ -> "tokens between held-out evaluations"
            | Calib_Text _ -> "calibration text of the taylor-calibrate init"
            | Train_Text _ -> "distillation training text"
            | Eval_Text _ -> "held-out evaluation text (no document shared with the other two)"
            | Out _ -> "output folder; a rerun with the same settings resumes it"
            | Seeds _ -> "seeds 0..S-1 (gate draws and data order; default 1)"
            | Stage_Split _ -> "Stage 1 : Stage 2 share of --tokens (default 1:6, the method's)"
            | Stage1_Lr _ -> "Stage-1 learning rate (default 1e-3)"
            | Lr_Attn _ -> "Stage-2 rate of names containing attn (default 1e-4; the same for both inits)"
            | Lr_Rest _ -> "Stage-2 rate of the rest (default 7e-6; the same for both inits)"
            | Seq_Len _ -> "tokens per row (default 256)"
            | Batch _ -> "rows per step (default 8)"
            | Align_Steps _ -> "Phase-2 alignment steps of the taylor-calibrate init (default 300)"
            | Eval_Max_Tokens _ -> "evaluate on the first N held-out tokens (default 16384)"
            | Selection_Tokens _ -> "training-text tokens that ar / ga-s2 score layers on (default 8192)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME"

type StudyArgs =
    | [<Mandatory>] Out of dir: string
    | Teachers of names: string
    | Policies of names: string
    | Quick
    | Seeds of n: int
    | Shared of dir: string
    | Teacher_Cache of dir: string
    | Corpora of dir: string
    | Device of device: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Out _ -> "output folder; a rerun resumes pair by pair"
            | Teachers _ -> "comma-separated: stories260K, sotu-llama, sotu-qwen2, sotu-qwen3 (default all present)"
            | Policies _ -> "comma-separated: uniform, ar, ga-s2 (default all)"
            | Quick -> "a smoke run: 1/4 of the token budgets, 60 alignment steps, 4096 held-out tokens"
            | Seeds _ -> "seeds per token budget (default 1)"
            | Shared _ -> "the shared data folder holding models/stories260K (default ../shared)"
            | Teacher_Cache _ -> "where `build.fsx teachers` cached the in-house teachers (default ~/.cache/taylor-calibrate/teachers)"
            | Corpora _ -> "where `build.fsx setup` put the npm corpora (default corpora/)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME"

type Args =
    | [<CliPrefix(CliPrefix.None)>] Ablation of ParseResults<AblationArgs>
    | [<CliPrefix(CliPrefix.None)>] Token_Budget of ParseResults<TokenBudgetArgs>
    | [<CliPrefix(CliPrefix.None)>] Study of ParseResults<StudyArgs>
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Ablation _ -> "zero-shot PPL of the init strategies (naive ... taylor-calibrate, calibrate-plus) vs the teacher"
            | Token_Budget _ -> "tokens a naive and a taylor-calibrate student need to reach matched held-out PPL (Stage 1 + Stage 2)"
            | Study _ -> "the ablation and the token budget for every (teacher, policy) pair, with one summary table"

/// Parses a comma-separated list with `parse`, naming the option in the error.
let private parseList (option: string) (parse: string -> 'a option) (text: string) =
    text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    |> Array.map (fun x -> parse x |> Option.defaultWith (fun () -> usageError $"{option} {text}: cannot read '{x}'"))
    |> List.ofArray

let private ablation (args: ParseResults<AblationArgs>) =
    let seeds = args.GetResult(AblationArgs.Seeds, 1)
    if seeds < 1 then usageError $"--seeds {seeds} must be at least 1"
    let steps = args.TryGetResult AblationArgs.Steps
    if steps |> Option.exists (fun s -> s < 1) then usageError $"--steps {steps.Value} must be at least 1"
    let strategies =
        match args.TryGetResult AblationArgs.Strategies with
        | Some text -> parseList "--strategies" Convert.InitStrategy.parse text
        | None -> Convert.InitStrategy.all
    let budgets = args.TryGetResult AblationArgs.Calib_Tokens |> Option.map (parseList "--calib-tokens" (fun x -> match Int32.TryParse x with | true, v -> Some v | _ -> None))
    budgets |> Option.iter (List.iter ConvertCommand.checkCalibTokens)
    let devTokens = args.TryGetResult AblationArgs.Calib_Dev_Tokens
    // Every (strategy, budget) pair; only calibrate-plus holds a dev part out of its budget.
    let jobs =
        [ for s in strategies do
            for n in (match budgets with Some ns -> ns | None -> [ ConvertCommand.defaultCalibTokens s ]) do
                let b = ZeroShotAblation.Budget.at s n
                yield if s = Convert.InitStrategy.CalibratePlus then { b with DevTokens = defaultArg devTokens b.DevTokens } else b ]
    for b in jobs do Calibration.fitChunks ConvertCommand.calibChunk b.CalibTokens b.DevTokens |> orFail |> ignore
    let evalText = args.GetResult AblationArgs.Eval_Text
    // Validates the teacher, the kept layers and both texts; the budgets' splits are built by the sweep.
    let p =
        ConvertCommand.prepare (args.GetResult AblationArgs.Teacher) (args.TryGetResult AblationArgs.Keep) (args.TryGetResult AblationArgs.Policy) (args.TryGetResult AblationArgs.Keep_Fraction)
                               (args.GetResult AblationArgs.Calib_Text) (Some evalText) (args.Contains AblationArgs.Allow_Overlap) (args.TryGetResult AblationArgs.Gqa_Expand)
                               ConvertCommand.calibChunk 0
    let c = p.Teacher.Config
    let evalDocs = p.EvalDocs |> Option.map snd |> Option.defaultValue []
    let set = Perplexity.prepare evalText c (Corpus.tokenStream p.Tokenizer evalDocs) (args.TryGetResult AblationArgs.Window) (args.TryGetResult AblationArgs.Max_Tokens) |> orFail
    let out = args.GetResult AblationArgs.Out |> nonEmptyPath "--out"
    if File.Exists out then usageError $"--out {out} is a file"
    let settings : ZeroShotAblation.Settings =
        { Budgets = jobs; Seeds = [ 0 .. seeds - 1 ]; AlignSteps = steps; PlusSteps = steps; Expand = p.Expand
          ChunkLength = ConvertCommand.calibChunk; AllowOverlap = p.AllowOverlap }
    use be = openDevice (args.TryGetResult AblationArgs.Device)
    let total = Stopwatch.StartNew()
    let stepText = match steps with Some s -> $"{s} steps" | None -> "default steps"
    AnsiConsole.MarkupLine("[bold]ablation[/] " + Markup.Escape $"{p.TeacherPath}: kept {p.Kept}, GQA {GqaExpand.name p.Expand}, {seeds} seed(s), {stepText}, eval {set.Windows} x {set.Window} tokens, device {be.Name}")
    let report =
        function
        | ZeroShotAblation.TeacherScored v -> printfn "teacher PPL %.3f" v
        | ZeroShotAblation.Converted(b, seed, v, secs) ->
            printfn "%-17s %6d tokens (%d held out), seed %d: PPL %.3f (convert %.1f s)" (Convert.InitStrategy.name b.Strategy) b.CalibTokens b.DevTokens seed v secs
    let teacherPpl, rows =
        ZeroShotAblation.sweep be p.Teacher p.Tokenizer p.Batch.Source p.CalibDocs (evalText, evalDocs) set p.Kept settings report CancellationToken.None
        |> orFail
    let context : ZeroShotAblation.Context =
        { TeacherPath = p.TeacherPath; Layers = c.Layers; Kept = p.Kept; CalibText = p.Batch.Source; EvalText = evalText
          EvalWindows = set.Windows; EvalWindow = set.Window; Settings = settings }
    let md = ZeroShotAblation.markdown context teacherPpl rows
    let label (r: ZeroShotAblation.Row) = $"{Convert.InitStrategy.name r.Budget.Strategy} @ {r.Budget.CalibTokens}"
    Directory.CreateDirectory out |> ignore
    AtomicFile.writeText (Path.Combine(out, "ablation.md")) md
    AtomicFile.writeText (Path.Combine(out, "ablation.json")) (ZeroShotAblation.json context teacherPpl rows total.Elapsed.TotalSeconds)
    AtomicFile.writeText (Path.Combine(out, "ablation.html"))
        (ReportHtml.ablationPage $"Zero-shot PPL, kept {p.Kept}, GQA {GqaExpand.name p.Expand}" (("teacher", teacherPpl) :: [ for r in rows -> label r, List.average r.Perplexity ]))
    printfn "%s" md
    printfn "wrote %s in %.1f s" out total.Elapsed.TotalSeconds
    0

/// Prints the pipeline's events: notes, and distillation progress at most every few seconds.
let private printer () =
    let last = Stopwatch.StartNew()
    fun (e: TokenBudget.Event) ->
        match e with
        | TokenBudget.Note m -> printfn "%s" m
        | TokenBudget.Distilling(run, p) ->
            match p with
            | Distill.Started(from, steps, perStep) -> printfn "%s: steps %d..%d of %d tokens" run (from + 1) steps perStep
            | Distill.Stepped(step, steps, tokens, loss, tps) when last.Elapsed.TotalSeconds >= 10.0 || step = steps ->
                last.Restart()
                let eta = float (int64 (steps - step)) * (float tokens / float step) / max tps 1e-9
                printfn "%s: step %d/%d (%.0f%%), %d tokens, loss %.4f, %.0f tokens/s, ETA %.0f s" run step steps (100.0 * float step / float steps) tokens loss tps eta
            | Distill.Stepped _ -> ()
            | Distill.Evaluating _ -> ()
            | Distill.Checkpointed(point, _) -> printfn "%s: %d tokens, held-out PPL %.3f" run point.Tokens point.Perplexity
            | Distill.Warning w -> eprintfn "warning: %s" w

let private tokenBudget (args: ParseResults<TokenBudgetArgs>) =
    let policy =
        LayerSelection.Policy.parse (args.GetResult TokenBudgetArgs.Policy) None
        |> Result.mapError (function InvalidOption(_, why) -> InvalidOption("--policy", why) | e -> e) |> orFail
    let split =
        match args.TryGetResult Stage_Split with
        | None -> 1, 6
        | Some text ->
            match text.Split(':') |> Array.map Int32.TryParse with
            | [| true, a; true, b |] -> a, b
            | _ -> usageError $"--stage-split {text}: expected two whole numbers as S1:S2, e.g. 1:6"
    let d = TokenBudget.Settings.defaults "" policy 0.25 0L 0L "" "" ""
    let s : TokenBudget.Settings =
        { d with
            TeacherPath = args.GetResult TokenBudgetArgs.Teacher |> nonEmptyPath "--teacher"
            KeepFraction = args.GetResult(TokenBudgetArgs.Keep_Fraction, 0.25) |> finite "--keep-fraction"
            Tokens = args.GetResult Tokens; Split = split; CheckpointEvery = args.GetResult TokenBudgetArgs.Checkpoint_Every
            CalibText = args.GetResult TokenBudgetArgs.Calib_Text; TrainText = args.GetResult TokenBudgetArgs.Train_Text
            EvalText = args.GetResult TokenBudgetArgs.Eval_Text; Seeds = args.GetResult(TokenBudgetArgs.Seeds, 1)
            Stage1Lr = args.GetResult(Stage1_Lr, d.Stage1Lr); Stage2LrAttention = args.GetResult(TokenBudgetArgs.Lr_Attn, d.Stage2LrAttention)
            Stage2LrRest = args.GetResult(TokenBudgetArgs.Lr_Rest, d.Stage2LrRest); SeqLen = args.GetResult(Seq_Len, d.SeqLen)
            Batch = args.GetResult(Batch, d.Batch); AlignSteps = args.GetResult(Align_Steps, d.AlignSteps)
            EvalMaxTokens = Some(args.GetResult(Eval_Max_Tokens, 16384)); SelectionTokens = args.GetResult(Selection_Tokens, d.SelectionTokens) }
    if s.EvalMaxTokens |> Option.exists (fun n -> n < 2) then usageError "--eval-max-tokens must be at least 2"
    TokenBudget.validate s |> orFail
    let out = args.GetResult TokenBudgetArgs.Out |> nonEmptyPath "--out"
    use be = openDevice (args.TryGetResult TokenBudgetArgs.Device)
    let outcome = TokenBudget.run be s out (printer ()) CancellationToken.None |> orFail
    TokenBudgetResult.write out outcome
    printfn "%s" (TokenBudgetResult.markdown outcome)
    printfn "wrote %s (token-budget.json, token-budget.md, learning-curves.svg, report.html) in %.1f s" out outcome.Seconds
    0

let private study (args: ParseResults<StudyArgs>) =
    let watch = Stopwatch.StartNew()
    let out = args.GetResult StudyArgs.Out |> nonEmptyPath "--out"
    if File.Exists out then usageError $"--out {out} is a file"
    let quick = args.Contains Quick
    let recipe = { (if quick then Study.Recipe.quick else Study.Recipe.full) with Seeds = args.GetResult(StudyArgs.Seeds, 1) }
    if recipe.Seeds < 1 then usageError "--seeds must be at least 1"
    let policies =
        args.TryGetResult Policies |> Option.defaultValue "uniform,ar,ga-s2"
        |> parseList "--policies" (fun n -> match LayerSelection.Policy.parse n None with Ok p -> Some p | Error _ -> None)
    let shared = args.GetResult(Shared, Path.Combine("..", "shared"))
    let cache = args.GetResult(Teacher_Cache, Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".cache", "taylor-calibrate", "teachers"))
    let corpora =
        let c = args.GetResult(Corpora, "corpora")
        if Directory.Exists(Path.Combine(c, "sotu", "package", "data")) then Some c else None
    Directory.CreateDirectory out |> ignore
    let all, notes =
        Study.teachers (if Directory.Exists shared then Some shared else None) cache (Path.Combine(out, "texts")) corpora quick |> orFail
    let known = [ "stories260K"; "sotu-llama"; "sotu-qwen2"; "sotu-qwen3" ]
    let wanted =
        match args.TryGetResult Teachers with
        | Some text -> parseList "--teachers" (fun n -> if List.contains n known then Some n else None) text
        | None -> known
    let teachers = all |> List.filter (fun t -> List.contains t.Name wanted)
    for n in notes do printfn "note: %s" n
    if teachers.IsEmpty then usageError "no teacher to study: none of the requested teachers is present (see the notes above)"
    use be = openDevice (args.TryGetResult StudyArgs.Device)
    let r = recipe
    let recipeText =
        $"Recipe (the same for both inits): keep fraction {r.KeepFraction}; Stage 1 : Stage 2 = 1:6 of each teacher's token budget; Stage 1 lr {r.Stage1Lr} cosine; Stage 2 lr {r.Stage2LrAttention} (attention/GDN) and {r.Stage2LrRest} (rest), constant (10x the method's 1e-4 / 7e-6: the budgets are a few hundred steps); rows of 256 x batch {r.Batch}; {r.Seeds} seed(s). Per teacher: "
        + (teachers |> List.map (fun t -> $"{t.Name}: {t.Tokens} tokens, evaluated every {t.CheckpointEvery} on the first {t.EvalMaxTokens} held-out tokens, {t.AlignSteps} alignment steps, calibrate-plus on {t.Plus.PlusFitTokens} fit + {t.Plus.PlusDevTokens} dev tokens and {t.Plus.PlusSteps} steps") |> String.concat "; ") + "."
    let pairs = [ for p in policies do for t in teachers -> t, p ]
    let pairLabel (t: Study.TeacherSetting, p) = $"{t.Name} / {LayerSelection.Policy.name p}"
    let skipped = [ for n in wanted do if not (teachers |> List.exists (fun t -> t.Name = n)) then yield $"{n}: every policy (teacher not present)" ]
    let results = Collections.Generic.List<Study.PairResult>()
    pairs |> List.iteri (fun i (t, p) ->
        printfn "\n== pair %d/%d: %s (%.0f s since start)" (i + 1) pairs.Length (pairLabel (t, p)) watch.Elapsed.TotalSeconds
        let sw = Stopwatch.StartNew()
        let res = Study.runPair be recipe out t p (printer ()) CancellationToken.None |> orFail
        results.Add res
        printfn "== pair %s done in %.0f s" (pairLabel (t, p)) sw.Elapsed.TotalSeconds
        let remaining = pairs |> List.skip (i + 1) |> List.map (fun x -> pairLabel x + ": not run yet")
        let title = if remaining.IsEmpty then "The study" else $"The study (partial: {i + 1} of {pairs.Length} pairs)"
        Study.writeSummary out title recipeText (List.ofSeq results) (skipped @ remaining) watch.Elapsed.TotalSeconds)
    printfn "%s" (File.ReadAllText(Path.Combine(out, "study.md")))
    printfn "wrote %s (study.md, study.json, report.html, SVG charts) in %.0f s" out watch.Elapsed.TotalSeconds
    0

let run (args: ParseResults<Args>) =
    match args.GetSubCommand() with
    | Ablation a -> ablation a
    | Token_Budget a -> tokenBudget a
    | Study a -> study a
