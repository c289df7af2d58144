/// `taylor-calibrate experiment ablation`: the paper's zero-shot ablation (method.md §9) on one teacher:
/// teacher PPL and the zero-shot PPL of the five init strategies on held-out text (fixed-window protocol
/// of Eval/Perplexity.fs), averaged over --seeds fresh-gate seeds, with the naive/taylor-calibrate ratio.
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
            | Steps _ -> "Phase 2 steps per layer (default 300)"
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
            | Ablation _ -> "zero-shot PPL of naive, zero-gate, taylor-init, alignment-only, taylor-calibrate vs the teacher"

let private ablation (args: ParseResults<AblationArgs>) =
    let seeds = args.GetResult(Seeds, 1)
    if seeds < 1 then usageError $"--seeds {seeds} must be at least 1"
    let steps = args.GetResult(Steps, 300)
    if steps < 1 then usageError $"--steps {steps} must be at least 1"
    let evalText = args.GetResult Eval_Text
    let p =
        ConvertCommand.prepare (args.GetResult Teacher) (args.TryGetResult Keep) (args.TryGetResult Policy) (args.TryGetResult Keep_Fraction)
                               (args.GetResult Calib_Text) (Some evalText) (args.Contains Allow_Overlap) (args.TryGetResult Gqa_Expand)
    let c = p.Teacher.Config
    let evalDocs = p.EvalDocs |> Option.map snd |> Option.defaultValue []
    let set = Perplexity.prepare evalText c (Corpus.tokenStream p.Tokenizer evalDocs) (args.TryGetResult Window) (args.TryGetResult Max_Tokens) |> orFail
    let out = args.GetResult Out |> nonEmptyPath "--out"
    if File.Exists out then usageError $"--out {out} is a file"
    let converted = [ 0 .. c.Layers - 1 ] |> List.except p.Kept
    use be = openDevice (args.TryGetResult Device)
    use dt = new DeviceDecoder(be, p.Teacher)
    let total = Stopwatch.StartNew()
    let ppl (lm: Perplexity.LogitsModel) = (Perplexity.evaluateModel lm None set None CancellationToken.None).Perplexity
    AnsiConsole.MarkupLine("[bold]ablation[/] " + Markup.Escape $"{p.TeacherPath}: kept {p.Kept}, GQA {GqaExpand.name p.Expand}, {seeds} seed(s), {steps} steps, eval {set.Windows} x {set.Window} tokens, device {be.Name}")
    let teacherPpl = ppl (Perplexity.decoderModel dt)
    printfn "teacher PPL %.3f" teacherPpl
    let trace = TeacherTrace.run dt p.Batch converted
    let rows =
        [ for strategy in Convert.InitStrategy.all do
            let name = Convert.InitStrategy.name strategy
            let perSeed =
                [ for seed in 0 .. seeds - 1 do
                    let w = Stopwatch.StartNew()
                    let o = { Convert.ConvertOptions.defaults strategy with Expand = p.Expand; Seed = seed; Align = { Align.AlignOptions.defaults with Steps = steps } }
                    let student, _ = Convert.run be p.Teacher trace p.Kept o Convert.Hooks.none CancellationToken.None
                    use m = new DeviceDecoder(be, student)
                    let v = ppl (Perplexity.decoderModel m)
                    printfn "%-17s seed %d: PPL %.3f (%.1f s)" name seed v w.Elapsed.TotalSeconds
                    yield v ]
            yield name, perSeed ]
    let mean (xs: float list) = List.average xs
    let tc = rows |> List.find (fun (n, _) -> n = "taylor-calibrate") |> snd |> mean
    let naive = rows |> List.find (fun (n, _) -> n = "naive") |> snd |> mean
    let md =
        let lines =
            [ $"# Zero-shot ablation: {Path.GetFileName p.TeacherPath}, kept {p.Kept} of {c.Layers}, GQA expansion {GqaExpand.name p.Expand}"
              ""
              $"Calibration: {p.Batch.Source} ({p.Batch.B} x {p.Batch.T} tokens); evaluation: {evalText} ({set.Windows} windows x {set.Window} tokens); {seeds} seed(s); {steps} alignment steps."
              ""
              "| model | PPL (mean over seeds) | per seed | vs taylor-calibrate |"
              "|---|---|---|---|"
              $"| teacher | {teacherPpl:F3} | | |"
              for name, xs in rows do
                  let per = xs |> List.map (sprintf "%.3f") |> String.concat ", "
                  $"| {name} | {mean xs:F3} | {per} | {mean xs / tc:F2}x |"
              ""
              $"naive / taylor-calibrate = **{naive / tc:F2}x**" ]
        String.concat "\n" lines + "\n"
    let json =
        let o = JsonObject()
        o["teacher"] <- JsonValue.Create p.TeacherPath
        o["keep_full_attention_layers"] <- JsonArray(p.Kept |> List.map (fun i -> JsonValue.Create i :> JsonNode) |> Array.ofList)
        o["gqa_expand"] <- JsonValue.Create(GqaExpand.name p.Expand)
        o["seeds"] <- JsonValue.Create seeds
        o["steps"] <- JsonValue.Create steps
        o["calib_text"] <- JsonValue.Create p.Batch.Source
        o["eval_text"] <- JsonValue.Create evalText
        o["eval_windows"] <- JsonValue.Create set.Windows
        o["eval_window"] <- JsonValue.Create set.Window
        o["teacher_ppl"] <- JsonValue.Create teacherPpl
        let r = JsonObject()
        for name, xs in rows do
            let e = JsonObject()
            e["mean_ppl"] <- JsonValue.Create(mean xs)
            e["per_seed"] <- JsonArray(xs |> List.map (fun v -> JsonValue.Create v :> JsonNode) |> Array.ofList)
            r[name] <- e
        o["strategies"] <- r
        o["naive_over_taylor_calibrate"] <- JsonValue.Create(naive / tc)
        o["seconds"] <- JsonValue.Create total.Elapsed.TotalSeconds
        o.ToJsonString(JsonSerializerOptions(WriteIndented = true))
    Directory.CreateDirectory out |> ignore
    AtomicFile.writeText (Path.Combine(out, "ablation.md")) md
    AtomicFile.writeText (Path.Combine(out, "ablation.json")) json
    AtomicFile.writeText (Path.Combine(out, "ablation.html"))
        (ReportHtml.ablationPage $"Zero-shot PPL, kept {p.Kept}, GQA {GqaExpand.name p.Expand}" (("teacher", teacherPpl) :: [ for n, xs in rows -> n, mean xs ]))
    printfn "%s" md
    printfn "wrote %s in %.1f s" out total.Elapsed.TotalSeconds
    0

let run (args: ParseResults<Args>) =
    match args.GetSubCommand() with
    | Ablation a -> ablation a
