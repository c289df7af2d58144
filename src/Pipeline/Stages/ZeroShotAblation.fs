/// The zero-shot ablation of one teacher and one kept-layer set (docs/method.md §9): the held-out PPL of the
/// student each init strategy builds (Convert), before any distillation, at one or more calibration budgets and
/// over fresh-gate seeds. A budget counts every calibration token a strategy reads: the published strategies fit
/// on all of it, calibrate-plus holds whole trailing documents of it out as its dev part
/// (Calibration.buildSplit), so strategies compare at equal text. `experiment ablation` and the study both run
/// this; the CLI only parses and prints.
module TaylorCalibrate.Pipeline.Stages.ZeroShotAblation

open System
open System.Collections.Generic
open System.Diagnostics
open System.Text.Json
open System.Text.Json.Nodes
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text

/// One strategy at one calibration budget: CalibTokens in all, DevTokens of them held out (0 but for calibrate-plus).
type Budget =
    { Strategy: Convert.InitStrategy
      CalibTokens: int
      DevTokens: int }

module Budget =
    /// A strategy at budget n with its default held-out part (ConvertJob.defaultDevTokens).
    let at (strategy: Convert.InitStrategy) (n: int) =
        { Strategy = strategy; CalibTokens = n; DevTokens = ConvertJob.defaultDevTokens strategy n }

    /// A strategy at its own default budget (the paper's 1,024 tokens; calibrate-plus's 20,480).
    let defaultFor (strategy: Convert.InitStrategy) = at strategy (ConvertJob.defaultCalibTokens strategy)

/// Everything a sweep varies besides the teacher, the texts and the kept layers.
type Settings =
    { Budgets: Budget list
      Seeds: int list
      /// Alignment steps of the published strategies and of calibrate-plus (None: each strategy's default).
      AlignSteps: int option
      PlusSteps: int option
      Expand: GqaExpand
      /// Chunk length of the calibration batches (256, or the teacher's context when shorter).
      ChunkLength: int
      AllowOverlap: bool }

/// One budget's results, one entry per seed in Settings.Seeds order.
type Row =
    { Budget: Budget
      Perplexity: float list
      /// Conversion wall time per seed (the teacher trace excluded).
      Seconds: float list }

/// Progress of a sweep.
type Event =
    | TeacherScored of perplexity: float
    | Converted of budget: Budget * seed: int * perplexity: float * seconds: float

/// Zero-shot PPL of every budget and seed on `set`, converting `teacher` with `kept` softmax layers; also the
/// teacher's own PPL. Every budget's split is built (and so checked) before any conversion runs.
let sweep (be: IBackend) (teacher: Teacher) (tok: ITokenizer) (calibSource: string) (calibDocs: string list)
          (eval: string * string list) (set: Perplexity.EvalSet) (kept: int list) (s: Settings)
          (report: Event -> unit) (ct: CancellationToken) : Result<float * Row list, InputError> =
    let c = teacher.Config
    let converted = [ 0 .. c.Layers - 1 ] |> List.except kept
    let splitOf (b: Budget) =
        inputResult {
            let! fit = Calibration.fitChunks s.ChunkLength b.CalibTokens b.DevTokens
            let opts = { Calibration.CalibrationOptions.defaults with Batch = fit; Length = s.ChunkLength; AllowOverlap = s.AllowOverlap }
            return! Calibration.buildSplit opts b.DevTokens tok calibSource calibDocs (Some eval) }
    let keys = s.Budgets |> List.map (fun b -> b.CalibTokens, b.DevTokens) |> List.distinct
    let splits = keys |> List.map (fun (n, d) -> splitOf { Strategy = Convert.InitStrategy.Naive; CalibTokens = n; DevTokens = d } |> Result.map (fun x -> (n, d), x))
    match splits |> List.tryPick (function Error e -> Some e | Ok _ -> None) with
    | Some e -> Error e
    | None ->
    let splits = splits |> List.choose Result.toOption |> Map.ofList
    use dt = new DeviceDecoder(be, teacher)
    let ppl (lm: Perplexity.LogitsModel) = (Perplexity.evaluateModel lm None set None ct).Perplexity
    let teacherPpl = ppl (Perplexity.decoderModel dt)
    report (TeacherScored teacherPpl)
    // One trace per split, shared by the strategies and seeds that use it.
    let traces = Dictionary<int * int, TeacherTrace.TeacherTrace * TeacherTrace.TeacherTrace option>()
    let traceFor key =
        match traces.TryGetValue key with
        | true, v -> v
        | _ ->
            let sp = splits[key]
            let v = TeacherTrace.runStreamed dt sp.Fit converted TeacherTrace.windowChunks,
                    sp.Dev |> Option.map (fun d -> TeacherTrace.runStreamed dt d converted TeacherTrace.windowChunks)
            traces[key] <- v
            v
    let rows =
        [ for b in s.Budgets do
            let fit, dev = traceFor (b.CalibTokens, b.DevTokens)
            let runs =
                [ for seed in s.Seeds do
                    let o = Convert.ConvertOptions.defaults b.Strategy
                    let o = { o with
                                Expand = s.Expand; Seed = seed
                                Align = { o.Align with Steps = defaultArg s.AlignSteps o.Align.Steps }
                                Plus = { o.Plus with Steps = defaultArg s.PlusSteps o.Plus.Steps } }
                    let w = Stopwatch.StartNew()
                    let student, _ = Convert.runWith be teacher fit dev kept o Convert.Hooks.none ct
                    let secs = w.Elapsed.TotalSeconds
                    use m = new DeviceDecoder(be, student)
                    let v = ppl (Perplexity.decoderModel m)
                    report (Converted(b, seed, v, secs))
                    yield v, secs ]
            yield { Budget = b; Perplexity = List.map fst runs; Seconds = List.map snd runs } ]
    Ok(teacherPpl, rows)

/// Mean and sample standard deviation (0 for one value).
let meanSd (xs: float list) =
    let m = List.average xs
    let sd = if xs.Length < 2 then 0.0 else sqrt ((xs |> List.sumBy (fun x -> (x - m) ** 2.0)) / float (xs.Length - 1))
    m, sd

/// What a sweep was run on, for its reports.
type Context =
    { TeacherPath: string
      Layers: int
      Kept: int list
      CalibText: string
      EvalText: string
      EvalWindows: int
      EvalWindow: int
      Settings: Settings }

/// The markdown table: one row per budget, mean ± sd over seeds, every seed, mean conversion time.
let markdown (x: Context) (teacherPpl: float) (rows: Row list) : string =
    let s = x.Settings
    let steps =
        match s.AlignSteps, s.PlusSteps with
        | None, None -> "default steps"
        | a, p -> $"""{a |> Option.map string |> Option.defaultValue "default"} alignment steps ({p |> Option.map string |> Option.defaultValue "default"} for calibrate-plus)"""
    let lines =
        [ $"# Zero-shot ablation: {IO.Path.GetFileName x.TeacherPath}, kept {x.Kept} of {x.Layers}, GQA expansion {GqaExpand.name s.Expand}"
          ""
          $"Calibration: {x.CalibText} (chunks of {s.ChunkLength} tokens; a budget counts every token read, calibrate-plus's held-out dev part included); evaluation: {x.EvalText} ({x.EvalWindows} windows x {x.EvalWindow} tokens); seeds {s.Seeds}; {steps}."
          ""
          "| model | calibration tokens (fit + dev) | PPL (mean ± sd over seeds) | per seed | convert s (mean) |"
          "|---|---|---|---|---|"
          $"| teacher | | {teacherPpl:F3} | | |"
          for r in rows do
              let m, sd = meanSd r.Perplexity
              let per = r.Perplexity |> List.map (sprintf "%.3f") |> String.concat ", "
              let b = r.Budget
              // The dev part in whole chunks, as Calibration.fitChunks holds it out.
              let dev = (b.DevTokens + s.ChunkLength - 1) / s.ChunkLength * s.ChunkLength
              $"| {Convert.InitStrategy.name b.Strategy} | {b.CalibTokens} ({b.CalibTokens - dev} + {dev}) | {m:F3} ± {sd:F3} | {per} | {List.average r.Seconds:F1} |" ]
    String.concat "\n" lines + "\n"

/// The same results as JSON.
let json (x: Context) (teacherPpl: float) (rows: Row list) (seconds: float) : string =
    let s = x.Settings
    let o = JsonObject()
    let ints (xs: int list) = JsonArray(xs |> List.map (fun i -> JsonValue.Create i :> JsonNode) |> Array.ofList)
    let floats (xs: float list) = JsonArray(xs |> List.map (fun v -> (if Double.IsFinite v then JsonValue.Create v :> JsonNode else null)) |> Array.ofList)
    o["teacher"] <- JsonValue.Create x.TeacherPath
    o["keep_full_attention_layers"] <- ints x.Kept
    o["gqa_expand"] <- JsonValue.Create(GqaExpand.name s.Expand)
    o["seeds"] <- ints s.Seeds
    s.AlignSteps |> Option.iter (fun v -> o["align_steps"] <- JsonValue.Create v)
    s.PlusSteps |> Option.iter (fun v -> o["plus_steps"] <- JsonValue.Create v)
    o["calib_text"] <- JsonValue.Create x.CalibText
    o["calib_chunk"] <- JsonValue.Create s.ChunkLength
    o["eval_text"] <- JsonValue.Create x.EvalText
    o["eval_windows"] <- JsonValue.Create x.EvalWindows
    o["eval_window"] <- JsonValue.Create x.EvalWindow
    o["teacher_ppl"] <- JsonValue.Create teacherPpl
    let arr = JsonArray()
    for r in rows do
        let e = JsonObject()
        let m, sd = meanSd r.Perplexity
        e["strategy"] <- JsonValue.Create(Convert.InitStrategy.name r.Budget.Strategy)
        e["calib_tokens"] <- JsonValue.Create r.Budget.CalibTokens
        e["calib_dev_tokens"] <- JsonValue.Create r.Budget.DevTokens
        e["mean_ppl"] <- JsonValue.Create m
        e["sd_ppl"] <- JsonValue.Create sd
        e["per_seed"] <- floats r.Perplexity
        e["convert_seconds"] <- floats r.Seconds
        arr.Add e
    o["results"] <- arr
    o["seconds"] <- JsonValue.Create seconds
    o.ToJsonString(JsonSerializerOptions(WriteIndented = true))

/// The study's calibration sizes and steps (the defaults are the method's and calibrate-plus's own).
type AblationOptions =
    { AlignSteps: int
      /// calibrate-plus: fit tokens (a multiple of the chunk length), held-out dev tokens, alignment steps.
      PlusFitTokens: int
      PlusDevTokens: int
      PlusSteps: int
      Seed: int }

module AblationOptions =
    let defaults = { AlignSteps = 300; PlusFitTokens = 16384; PlusDevTokens = 4096; PlusSteps = 600; Seed = 0 }

/// One strategy's zero-shot result in the study.
type StrategyResult =
    { Strategy: Convert.InitStrategy
      Perplexity: float
      /// Conversion wall time (the teacher trace excluded).
      Seconds: float }

/// The study's ablation: each of `strategies` once (seed o.Seed), the published ones on 4 chunks, calibrate-plus
/// on o.PlusFitTokens fit + o.PlusDevTokens dev tokens.
let run (be: IBackend) (teacher: Teacher) (tok: ITokenizer) (calibSource: string) (calibDocs: string list)
        (eval: string * string list) (set: Perplexity.EvalSet) (kept: int list) (o: AblationOptions)
        (strategies: Convert.InitStrategy list) (log: string -> unit) (ct: CancellationToken) : Result<StrategyResult list, InputError> =
    let length = min 256 teacher.Config.Context
    let devChunks = (o.PlusDevTokens + length - 1) / length
    let budgetOf strategy =
        if strategy = Convert.InitStrategy.CalibratePlus then
            { Strategy = strategy; CalibTokens = (max 1 (o.PlusFitTokens / length) + devChunks) * length; DevTokens = o.PlusDevTokens }
        else { Strategy = strategy; CalibTokens = 4 * length; DevTokens = 0 }
    let settings =
        { Budgets = strategies |> List.map budgetOf; Seeds = [ o.Seed ]; AlignSteps = Some o.AlignSteps; PlusSteps = Some o.PlusSteps
          Expand = GqaExpand.Heads; ChunkLength = length; AllowOverlap = false }
    let report =
        function
        | TeacherScored _ -> ()
        | Converted(b, _, v, secs) -> log $"zero-shot ablation: {Convert.InitStrategy.name b.Strategy} PPL {v:F3} (convert {secs:F1} s)"
    sweep be teacher tok calibSource calibDocs eval set kept settings report ct
    |> Result.map (fun (_, rows) ->
        [ for r in rows -> { Strategy = r.Budget.Strategy; Perplexity = r.Perplexity.Head; Seconds = r.Seconds.Head } ])
