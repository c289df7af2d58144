/// `taylor-calibrate experiment ablation`: the paper's zero-shot ablation (docs/method.md §9) on one teacher:
/// teacher PPL and the zero-shot PPL of the init strategies (the paper's five and calibrate-plus) on held-out
/// text (fixed-window protocol of Eval/Perplexity.fs), over --seeds fresh-gate seeds (mean ± sd) and,
/// optionally, a sweep of calibration budgets; each row also gives the conversion's wall time.
/// Writes DIR/ablation.md, DIR/ablation.json and DIR/ablation.html, each atomically.
module TaylorCalibrate.Cli.ExperimentCommand

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open System.Threading
open Argu
open Spectre.Console
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
            | Calib_Tokens _ -> "comma-separated calibration budgets (multiples of 256) to sweep; default each strategy's own"
            | Calib_Dev_Tokens _ -> "held-out calibration tokens for calibrate-plus's selection (default 4096)"
            | Gqa_Expand _ -> "heads (default) | rows"
            | Window _ -> "evaluation window (default min(2048, context))"
            | Max_Tokens _ -> "evaluate only the first N tokens"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME"
            | Out _ -> "output directory for ablation.md, ablation.json, ablation.html"

type Args =
    | [<CliPrefix(CliPrefix.None)>] Ablation of ParseResults<AblationArgs>
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Ablation _ -> "zero-shot PPL of the init strategies (naive ... taylor-calibrate, calibrate-plus) vs the teacher"

/// Mean and sample standard deviation (0 for one value).
let private meanSd (xs: float list) =
    let m = List.average xs
    let sd = if xs.Length < 2 then 0.0 else sqrt ((xs |> List.sumBy (fun x -> (x - m) ** 2.0)) / float (xs.Length - 1))
    m, sd

/// Parses a comma-separated list with `parse`, naming the option in the error.
let private parseList (option: string) (parse: string -> 'a option) (text: string) =
    text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
    |> Array.map (fun x -> parse x |> Option.defaultWith (fun () -> usageError $"{option} {text}: cannot read '{x}'"))
    |> List.ofArray

/// One strategy at one calibration budget, over seeds.
type private Row =
    { Strategy: Convert.InitStrategy
      CalibTokens: int
      Ppl: float list
      Seconds: float list }

let private ablation (args: ParseResults<AblationArgs>) =
    let seeds = args.GetResult(Seeds, 1)
    if seeds < 1 then usageError $"--seeds {seeds} must be at least 1"
    let steps = args.TryGetResult Steps
    if steps |> Option.exists (fun s -> s < 1) then usageError $"--steps {steps.Value} must be at least 1"
    let strategies =
        match args.TryGetResult Strategies with
        | Some text -> parseList "--strategies" Convert.InitStrategy.parse text
        | None -> Convert.InitStrategy.all
    let budgets = args.TryGetResult Calib_Tokens |> Option.map (parseList "--calib-tokens" (fun x -> match Int32.TryParse x with | true, v -> Some v | _ -> None))
    budgets |> Option.iter (List.iter ConvertCommand.checkCalibTokens)
    // Only calibrate-plus uses held-out calibration text; without it the published batch needs no more text than before.
    let devTokens =
        if List.contains Convert.InitStrategy.CalibratePlus strategies then
            args.GetResult(Calib_Dev_Tokens, ConvertCommand.defaultDevTokens Convert.InitStrategy.CalibratePlus)
        else 0
    let evalText = args.GetResult Eval_Text
    let p =
        ConvertCommand.prepare (args.GetResult Teacher) (args.TryGetResult Keep) (args.TryGetResult Policy) (args.TryGetResult Keep_Fraction)
                               (args.GetResult Calib_Text) (Some evalText) (args.Contains Allow_Overlap) (args.TryGetResult Gqa_Expand)
                               ConvertCommand.calibChunk devTokens
    let c = p.Teacher.Config
    let evalDocs = p.EvalDocs |> Option.map snd |> Option.defaultValue []
    let set = Perplexity.prepare evalText c (Corpus.tokenStream p.Tokenizer evalDocs) (args.TryGetResult Window) (args.TryGetResult Max_Tokens) |> orFail
    let out = args.GetResult Out |> nonEmptyPath "--out"
    if File.Exists out then usageError $"--out {out} is a file"
    let converted = [ 0 .. c.Layers - 1 ] |> List.except p.Kept
    // Every (strategy, budget) pair, budgets validated before any work.
    let jobs =
        [ for s in strategies do
            for n in (match budgets with Some ns -> ns | None -> [ ConvertCommand.defaultCalibTokens s ]) do
                yield s, n ]
    let splits = jobs |> List.map snd |> List.distinct |> List.map (fun n -> n, ConvertCommand.split p n devTokens) |> Map.ofList
    use be = openDevice (args.TryGetResult Device)
    use dt = new DeviceDecoder(be, p.Teacher)
    let total = Stopwatch.StartNew()
    let ppl (lm: Perplexity.LogitsModel) = (Perplexity.evaluateModel lm None set None CancellationToken.None).Perplexity
    let stepText = match steps with Some s -> $"{s} steps" | None -> "default steps"
    AnsiConsole.MarkupLine("[bold]ablation[/] " + Markup.Escape $"{p.TeacherPath}: kept {p.Kept}, GQA {GqaExpand.name p.Expand}, {seeds} seed(s), {stepText}, eval {set.Windows} x {set.Window} tokens, device {be.Name}")
    let teacherPpl = ppl (Perplexity.decoderModel dt)
    printfn "teacher PPL %.3f" teacherPpl
    let traces = Collections.Generic.Dictionary<int, TeacherTrace.TeacherTrace * TeacherTrace.TeacherTrace option>()
    let traceFor n =
        match traces.TryGetValue n with
        | true, v -> v
        | _ ->
            let sp = splits[n]
            let v = TeacherTrace.runStreamed dt sp.Fit converted TeacherTrace.windowChunks,
                    sp.Dev |> Option.map (fun d -> TeacherTrace.runStreamed dt d converted TeacherTrace.windowChunks)
            traces[n] <- v
            v
    let rows =
        [ for strategy, n in jobs do
            let name = Convert.InitStrategy.name strategy
            let fit, dev = traceFor n
            let runs =
                [ for seed in 0 .. seeds - 1 do
                    let w = Stopwatch.StartNew()
                    let o = Convert.ConvertOptions.defaults strategy
                    let o = { o with
                                Expand = p.Expand; Seed = seed
                                Align = { o.Align with Steps = defaultArg steps o.Align.Steps }
                                Plus = { o.Plus with Steps = defaultArg steps o.Plus.Steps } }
                    let student, _ = Convert.runWith be p.Teacher fit dev p.Kept o Convert.Hooks.none CancellationToken.None
                    let secs = w.Elapsed.TotalSeconds
                    use m = new DeviceDecoder(be, student)
                    let v = ppl (Perplexity.decoderModel m)
                    printfn "%-17s %6d tokens, seed %d: PPL %.3f (convert %.1f s)" name n seed v secs
                    yield v, secs ]
            yield { Strategy = strategy; CalibTokens = n; Ppl = List.map fst runs; Seconds = List.map snd runs } ]
    let label (r: Row) = $"{Convert.InitStrategy.name r.Strategy} @ {r.CalibTokens}"
    let md =
        let lines =
            [ $"# Zero-shot ablation: {Path.GetFileName p.TeacherPath}, kept {p.Kept} of {c.Layers}, GQA expansion {GqaExpand.name p.Expand}"
              ""
              $"Calibration: {p.Batch.Source} (chunks of {p.Batch.T} tokens; calibrate-plus holds out {devTokens} tokens of it for selection); evaluation: {evalText} ({set.Windows} windows x {set.Window} tokens); {seeds} seed(s); {stepText}."
              ""
              "| model | calibration tokens | PPL (mean ± sd over seeds) | per seed | convert s (mean) |"
              "|---|---|---|---|---|"
              $"| teacher | | {teacherPpl:F3} | | |"
              for r in rows do
                  let m, sd = meanSd r.Ppl
                  let per = r.Ppl |> List.map (sprintf "%.3f") |> String.concat ", "
                  $"| {Convert.InitStrategy.name r.Strategy} | {r.CalibTokens} | {m:F3} ± {sd:F3} | {per} | {List.average r.Seconds:F1} |" ]
        String.concat "\n" lines + "\n"
    let json =
        let o = JsonObject()
        o["teacher"] <- JsonValue.Create p.TeacherPath
        o["keep_full_attention_layers"] <- JsonArray(p.Kept |> List.map (fun i -> JsonValue.Create i :> JsonNode) |> Array.ofList)
        o["gqa_expand"] <- JsonValue.Create(GqaExpand.name p.Expand)
        o["seeds"] <- JsonValue.Create seeds
        steps |> Option.iter (fun s -> o["steps"] <- JsonValue.Create s)
        o["calib_text"] <- JsonValue.Create p.Batch.Source
        o["calib_dev_tokens"] <- JsonValue.Create devTokens
        o["eval_text"] <- JsonValue.Create evalText
        o["eval_windows"] <- JsonValue.Create set.Windows
        o["eval_window"] <- JsonValue.Create set.Window
        o["teacher_ppl"] <- JsonValue.Create teacherPpl
        let arr = JsonArray()
        for r in rows do
            let e = JsonObject()
            let m, sd = meanSd r.Ppl
            e["strategy"] <- JsonValue.Create(Convert.InitStrategy.name r.Strategy)
            e["calib_tokens"] <- JsonValue.Create r.CalibTokens
            e["mean_ppl"] <- JsonValue.Create m
            e["sd_ppl"] <- JsonValue.Create sd
            e["per_seed"] <- JsonArray(r.Ppl |> List.map (fun v -> JsonValue.Create v :> JsonNode) |> Array.ofList)
            e["convert_seconds"] <- JsonArray(r.Seconds |> List.map (fun v -> JsonValue.Create v :> JsonNode) |> Array.ofList)
            arr.Add e
        o["results"] <- arr
        o["seconds"] <- JsonValue.Create total.Elapsed.TotalSeconds
        o.ToJsonString(JsonSerializerOptions(WriteIndented = true))
    Directory.CreateDirectory out |> ignore
    AtomicFile.writeText (Path.Combine(out, "ablation.md")) md
    AtomicFile.writeText (Path.Combine(out, "ablation.json")) json
    AtomicFile.writeText (Path.Combine(out, "ablation.html"))
        (ReportHtml.ablationPage $"Zero-shot PPL, kept {p.Kept}, GQA {GqaExpand.name p.Expand}" (("teacher", teacherPpl) :: [ for r in rows -> label r, List.average r.Ppl ]))
    printfn "%s" md
    printfn "wrote %s in %.1f s" out total.Elapsed.TotalSeconds
    0

let run (args: ParseResults<Args>) =
    match args.GetSubCommand() with
    | Ablation a -> ablation a
