/// Tokens-to-target and the BL/TC ratios of a token-budget experiment (docs/method.md §8), and its outputs:
/// token-budget.json, token-budget.md, learning-curves.svg (+ .json) and report.html (offline: inline SVG).
/// Targets: 1.10, 1.15, 1.20 and 1.25 times the teacher's held-out PPL, and the baseline's (naive) final PPL.
/// A curve reaches a target
///   - at 0 tokens when its zero-shot PPL is already at or below it;
///   - "≤ c" when it is reached between the zero-shot point and the first checkpoint c: the curve falls
///     fastest there, so a straight line between the two points says little; only the bound is reported;
///   - at the linear interpolation between the two checkpoints that bracket it (LearningCurve.tokensTo);
///   - not at all within the budget.
/// The ratio tokens_BL / tokens_TC is exact when both are interpolated, a bound when one side is a bound
/// (or not reached: the budget bounds it), and unbounded when Taylor-Calibrate starts at the target and the
/// baseline does not. The mean ± sample standard deviation over seeds uses the exact ratios only.
module TaylorCalibrate.Pipeline.Stages.TokenBudgetResult

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TaylorCalibrate.Pipeline.Distill.LearningCurve
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Report
open TaylorCalibrate.Pipeline.Stages.TokenBudget

/// Where a curve reaches a target.
type Reach =
    | ZeroShot
    /// Between 0 tokens and the first checkpoint (at these tokens).
    | AtMost of firstCheckpoint: int64
    | At of tokens: float
    /// Not within the run's budget (its last point's tokens).
    | Missed of budget: int64

/// tokens_BL / tokens_TC.
type Ratio =
    | Exact of float
    | AtLeast of float
    | AtMostRatio of float
    /// Taylor-Calibrate is there zero-shot, the baseline is not.
    | Unbounded
    /// Neither figure bounds it (both zero-shot, both within the first segment, or neither reached).
    | Undetermined

let reach (target: float) (points: CurvePoint list) : Reach =
    let pts = points |> List.filter (fun p -> Double.IsFinite p.Perplexity)
    match tokensTo target pts with
    | AtFirstPoint _ -> ZeroShot
    | Interpolated t ->
        match pts with
        | _ :: first :: _ when t <= float first.Tokens && pts.Head.Tokens = 0L -> AtMost first.Tokens
        | _ -> At t
    | Crossing.NotReached -> Missed(match List.tryLast pts with Some p -> p.Tokens | None -> 0L)

let ratio (bl: Reach) (tc: Reach) : Ratio =
    match bl, tc with
    | At b, At t -> Exact(b / t)
    | At b, AtMost c -> AtLeast(b / float c)
    | AtMost c, At t -> AtMostRatio(float c / t)
    | Missed n, At t -> AtLeast(float n / t)
    | Missed n, AtMost c -> AtLeast(float n / float c)
    | At b, Missed n -> AtMostRatio(b / float n)
    | AtMost c, Missed n -> AtMostRatio(float c / float n)
    | (At _ | AtMost _ | Missed _), ZeroShot -> Unbounded
    | ZeroShot, (At _ | AtMost _ | Missed _) -> AtMostRatio 0.0
    | ZeroShot, ZeroShot | AtMost _, AtMost _ | Missed _, Missed _ -> Undetermined

/// A target row: its name, PPL and per seed (BL reach, TC reach, ratio).
type TargetRow =
    { Name: string
      Factor: float option
      /// The target PPL of each seed (the baseline's final PPL differs by seed).
      Perplexity: float list
      PerSeed: (Reach * Reach * Ratio) list }

/// Mean and sample standard deviation of the exact ratios (None when there is none).
let exactMean (row: TargetRow) =
    let xs = row.PerSeed |> List.choose (fun (_, _, r) -> match r with Exact v -> Some v | _ -> None)
    match xs with
    | [] -> None
    | _ ->
        let m = List.average xs
        let sd = if xs.Length < 2 then 0.0 else sqrt ((xs |> List.sumBy (fun x -> (x - m) ** 2.0)) / float (xs.Length - 1))
        Some(m, sd, xs.Length)

let factors = [ 1.10; 1.15; 1.20; 1.25 ]

/// The runs of one init, by seed.
let runsOf (o: Outcome) init = o.Runs |> List.filter (fun r -> r.Init = init) |> List.sortBy (fun r -> r.Seed)

/// Every target row of an outcome.
let targets (o: Outcome) : TargetRow list =
    let bl = runsOf o Convert.InitStrategy.Naive
    let tc = runsOf o Convert.InitStrategy.TaylorCalibrate
    let pairs = List.zip bl tc
    let row name factor (targetOf: StudentRun -> float) =
        { Name = name; Factor = factor
          Perplexity = [ for b, _ in pairs -> targetOf b ]
          PerSeed =
            [ for b, t in pairs ->
                let target = targetOf b
                let rb, rt = reach target b.Points, reach target t.Points
                rb, rt, ratio rb rt ] }
    [ for f in factors -> row $"{f:F2}x teacher" (Some f) (fun _ -> f * o.TeacherPerplexity) ]
    @ [ row "baseline final" None (fun b -> (List.last b.Points).Perplexity) ]

let describeReach = function
    | ZeroShot -> "0 (zero-shot)"
    | AtMost c -> $"≤ {c}"
    | At t -> $"{t:F0}"
    | Missed n -> $"not reached (> {n})"

let describeRatio = function
    | Exact v -> $"{v:F2}x"
    | AtLeast v -> $"≥ {v:F2}x"
    | AtMostRatio v -> $"≤ {v:F2}x"
    | Unbounded -> "∞ (TC zero-shot)"
    | Undetermined -> "–"

/// The ratio column of a row: mean ± sd over the exact seeds, else the per-seed bounds.
let describeRow (row: TargetRow) =
    match exactMean row, row.PerSeed with
    | Some(m, sd, n), _ when n = row.PerSeed.Length && n > 1 -> $"{m:F2}x ± {sd:F2}"
    | Some(m, sd, n), _ when n > 1 -> $"{m:F2}x ± {sd:F2} ({n} of {row.PerSeed.Length} seeds exact)"
    | _, [ _, _, r ] -> describeRatio r
    | _, seeds -> seeds |> List.map (fun (_, _, r) -> describeRatio r) |> String.concat ", "

let private num (v: float) : JsonNode = if Double.IsFinite v then JsonValue.Create v else null

let private reachNode (r: Reach) : JsonNode =
    let o = JsonObject()
    match r with
    | ZeroShot -> o["kind"] <- JsonValue.Create "zero_shot"; o["tokens"] <- JsonValue.Create 0.0
    | AtMost c -> o["kind"] <- JsonValue.Create "at_most"; o["tokens"] <- JsonValue.Create(float c)
    | At t -> o["kind"] <- JsonValue.Create "interpolated"; o["tokens"] <- JsonValue.Create t
    | Missed n -> o["kind"] <- JsonValue.Create "not_reached"; o["budget"] <- JsonValue.Create n
    o["text"] <- JsonValue.Create(describeReach r)
    o

let private ratioNode (r: Ratio) : JsonNode =
    let o = JsonObject()
    let set (k: string) (v: float) = o["kind"] <- JsonValue.Create k; o["value"] <- num v
    match r with
    | Exact v -> set "exact" v
    | AtLeast v -> set "at_least" v
    | AtMostRatio v -> set "at_most" v
    | Unbounded -> o["kind"] <- JsonValue.Create "unbounded"
    | Undetermined -> o["kind"] <- JsonValue.Create "undetermined"
    o["text"] <- JsonValue.Create(describeRatio r)
    o

let private curveNode (r: StudentRun) : JsonNode =
    let o = JsonObject()
    o["init"] <- JsonValue.Create(Convert.InitStrategy.name r.Init)
    o["seed"] <- JsonValue.Create r.Seed
    o["stage1_tokens"] <- JsonValue.Create r.Stage1Tokens
    o["points"] <- JsonArray([| for p in r.Points ->
                                 JsonObject(dict [ "tokens", JsonValue.Create p.Tokens :> JsonNode; "perplexity", num p.Perplexity
                                                   "stage", JsonValue.Create(if p.Tokens <= r.Stage1Tokens then 1 else 2) :> JsonNode ]) :> JsonNode |])
    o

/// token-budget.json as a node (the study embeds it).
let toJsonNode (o: Outcome) : JsonObject =
    let s = o.Settings
    let j = JsonObject()
    let settings = JsonObject()
    for k, v in Settings.identity s do settings[k] <- JsonValue.Create v
    settings["seeds"] <- JsonValue.Create s.Seeds
    j["settings"] <- settings
    let s1, s2 = Settings.stageTokens s
    j["stage1_tokens"] <- JsonValue.Create s1
    j["stage2_tokens"] <- JsonValue.Create s2
    j["layers"] <- JsonValue.Create o.Layers
    j["kept_layers"] <- JsonArray(o.Kept |> List.map (fun i -> JsonValue.Create i :> JsonNode) |> Array.ofList)
    j["teacher_perplexity"] <- num o.TeacherPerplexity
    j["curves"] <- JsonArray([| for r in o.Runs -> curveNode r |])
    j["targets"] <-
        JsonArray([| for row in targets o ->
                       let e = JsonObject()
                       e["name"] <- JsonValue.Create row.Name
                       e["factor"] <- (match row.Factor with Some f -> num f | None -> null)
                       e["per_seed"] <-
                           JsonArray([| for (bl, tc, r), ppl, seed in List.zip3 row.PerSeed row.Perplexity [ 0 .. row.PerSeed.Length - 1 ] ->
                                          JsonObject(dict [ "seed", JsonValue.Create seed :> JsonNode; "target_perplexity", num ppl
                                                            "baseline", reachNode bl; "taylor_calibrate", reachNode tc
                                                            "ratio_bl_over_tc", ratioNode r ]) :> JsonNode |])
                       match exactMean row with
                       | Some(m, sd, n) -> e["ratio_mean"] <- num m; e["ratio_sd"] <- num sd; e["ratio_exact_seeds"] <- JsonValue.Create n
                       | None -> e["ratio_mean"] <- null
                       e["ratio_text"] <- JsonValue.Create(describeRow row)
                       e :> JsonNode |])
    j["seconds"] <- num o.Seconds
    j

/// The learning curves of every run, against the teacher and 1.25x the teacher.
let chart (o: Outcome) : SvgChart.Chart =
    let series =
        [ for r in o.Runs ->
            $"{Convert.InitStrategy.name r.Init} seed {r.Seed}",
            r.Points |> List.map (fun p -> float p.Tokens) |> Array.ofList,
            r.Points |> List.map (fun p -> p.Perplexity) |> Array.ofList ]
    let xs = series |> List.collect (fun (_, x, _) -> List.ofArray x)
    let span = [| List.min xs; List.max xs |]
    let flat v = Array.map (fun _ -> v) span
    SvgChart.lines $"Stage 1 + Stage 2: held-out perplexity (kept {o.Kept})" "training tokens (Stage 1, then Stage 2)" "perplexity" true
        (series @ [ "teacher", span, flat o.TeacherPerplexity; "1.25x teacher", span, flat (1.25 * o.TeacherPerplexity) ])

/// The markdown table of targets.
let markdown (o: Outcome) : string =
    let s = o.Settings
    let s1, s2 = Settings.stageTokens s
    let zero init = runsOf o init |> List.map (fun r -> r.Points.Head.Perplexity) |> List.averageBy id
    let afterS1 init = runsOf o init |> List.averageBy (fun r -> (r.Points |> List.findBack (fun p -> p.Tokens <= r.Stage1Tokens)).Perplexity)
    let final init = runsOf o init |> List.averageBy (fun r -> (List.last r.Points).Perplexity)
    let perSeed (sel: Reach * Reach * Ratio -> string) (row: TargetRow) = row.PerSeed |> List.map sel |> String.concat "; "
    let lines =
        [ $"# Token budget: {Path.GetFileName(s.TeacherPath.TrimEnd('/'))}, policy {LayerSelection.Policy.name s.Policy}, kept {o.Kept} of {o.Layers}"
          ""
          $"Stage 1 {s1} tokens (lr {s.Stage1Lr}, cosine) then Stage 2 {s2} tokens (lr {s.Stage2LrAttention} attention/GDN, {s.Stage2LrRest} rest, constant), the same for both inits; rows of {s.SeqLen} x batch {s.Batch}; held-out PPL every {s.CheckpointEvery} tokens on {s.EvalText}; {s.Seeds} seed(s). Teacher PPL {o.TeacherPerplexity:F3}."
          ""
          "| student | zero-shot | after Stage 1 | final |"
          "|---|---|---|---|"
          $"| naive (BL) | {zero Convert.InitStrategy.Naive:F3} | {afterS1 Convert.InitStrategy.Naive:F3} | {final Convert.InitStrategy.Naive:F3} |"
          $"| taylor-calibrate (TC) | {zero Convert.InitStrategy.TaylorCalibrate:F3} | {afterS1 Convert.InitStrategy.TaylorCalibrate:F3} | {final Convert.InitStrategy.TaylorCalibrate:F3} |"
          ""
          "| target | PPL | BL tokens | TC tokens | BL/TC |"
          "|---|---|---|---|---|"
          for row in targets o do
              let ppl = row.Perplexity |> List.map (sprintf "%.3f") |> String.concat "; "
              $"| {row.Name} | {ppl} | {perSeed (fun (b, _, _) -> describeReach b) row} | {perSeed (fun (_, t, _) -> describeReach t) row} | {describeRow row} |" ]
    String.concat "\n" lines + "\n"

/// Writes token-budget.json, token-budget.md, learning-curves.svg + .json and report.html into `out`.
let write (out: string) (o: Outcome) =
    AtomicFile.writeText (Path.Combine(out, "token-budget.json")) ((toJsonNode o).ToJsonString(JsonSerializerOptions(WriteIndented = true)))
    let md = markdown o
    AtomicFile.writeText (Path.Combine(out, "token-budget.md")) md
    let ch = chart o
    SvgChart.save (Path.Combine(out, "learning-curves.svg")) ch
    let html = ReportHtml.page "Token budget" [ ch ]
    let enc (t: string) = Net.WebUtility.HtmlEncode t
    let table = "<pre>" + enc md + "</pre>"
    AtomicFile.writeText (Path.Combine(out, "report.html")) (html.Replace("<h1>Token budget</h1>", "<h1>Token budget</h1>\n" + table))
