/// The pieces of `taylor-calibrate demo` (the main job on built-in defaults) that are not another stage:
/// the output folder it may own, the State-of-the-Union texts it splits by document (addresses before 2000
/// train, distil and calibrate; later ones are held out), the token ratio of the two distillation curves,
/// and the report (summary.json + a self-contained report.html of inline SVG charts beside tables).
/// The method the demo shows is in docs/method.md; the curves come from Distill/LearningCurve.fs.
module TaylorCalibrate.Pipeline.Stages.Demo

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Distill.LearningCurve
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Report

/// The file that marks a folder as written by the demo, so that a later demo may replace it.
let markerName = ".taylor-calibrate-demo"

/// Makes `dir` ready for a demo run: created when absent; emptied when it holds the demo marker (an
/// earlier demo's output); refused when it holds anything else, so that no one's files are deleted, and
/// refused when one of the run's `inputs` (option, path) lies inside it, since emptying it would delete them.
let prepareOut (dir: string) (inputs: (string * string) list) : Result<unit, InputError> =
    let marker = Path.Combine(dir, markerName)
    let full = Path.TrimEndingDirectorySeparator(Path.GetFullPath dir) + string Path.DirectorySeparatorChar
    let inside = inputs |> List.tryFind (fun (_, p) -> Path.GetFullPath(p).StartsWith(full, StringComparison.Ordinal))
    if File.Exists dir then Error(InvalidOption("--out", $"{dir} is a file, not a folder"))
    elif inside.IsSome then
        let option, p = inside.Value
        Error(InvalidOption("--out", $"{dir} holds the run's own input {p} ({option}); choose an --out outside it"))
    elif Directory.Exists dir && Directory.EnumerateFileSystemEntries dir |> Seq.isEmpty |> not && not (File.Exists marker) then
        Error(InvalidOption("--out", $"{dir} is not empty and was not written by demo; give an empty or new folder"))
    else
        if Directory.Exists dir then Directory.Delete(dir, true)
        Directory.CreateDirectory dir |> ignore
        File.WriteAllText(marker, "written by taylor-calibrate demo; the next demo into this folder replaces it\n")
        Ok()

/// The demo's texts as story files (documents separated by `<|endoftext|>` lines), which every command reads.
type DemoTexts =
    { /// Distillation training text: every address before the split year.
      Train: string
      /// Calibration text: the last `calibDocuments` addresses before the split year (a part of Train).
      Calib: string
      /// Held-out evaluation text: the addresses from the split year on.
      Eval: string
      TrainDocuments: int
      CalibDocuments: int
      EvalDocuments: int }

/// Splits a corpus by document name at `heldOutFrom` and writes the three texts into `dir`.
let writeTexts (source: DocumentSource) (heldOutFrom: string) (calibDocuments: int) (dir: string) : Result<DemoTexts, InputError> =
    Documents.read source
    |> Result.bind (DocumentSplit.apply "demo corpus" (NamesFrom heldOutFrom))
    |> Result.map (fun split ->
        Directory.CreateDirectory dir |> ignore
        let write name (docs: Document[]) =
            let path = Path.Combine(dir, name)
            AtomicFile.writeText path (docs |> Array.map (fun d -> d.Text) |> String.concat "\n<|endoftext|>\n")
            path
        let calib = split.Train |> Array.skip (max 0 (split.Train.Length - calibDocuments))
        { Train = write "train.txt" split.Train; Calib = write "calib.txt" calib; Eval = write "eval.txt" split.HeldOut
          TrainDocuments = split.Train.Length; CalibDocuments = calib.Length; EvalDocuments = split.HeldOut.Length })

/// What the token ratio compares: the training tokens the naive student took to reach its final held-out
/// PPL, over the tokens the Taylor-Calibrate student took to reach the same PPL (interpolated between
/// checkpoints; a lower bound on the ratio when the Taylor-Calibrate student starts at or below it).
type TokenRatio =
    | Measured of naiveTokens: int64 * taylorTokens: float
    /// Taylor-Calibrate's first checkpoint (zero-shot, 0 tokens) is already at or below the target.
    | AtLeast of naiveTokens: int64 * firstTokens: int64
    /// Taylor-Calibrate never reached the naive student's final PPL.
    | NotReachedByTaylor

let tokenRatio (naive: Curve) (taylor: Curve) : TokenRatio =
    match List.tryLast naive.Points with
    | None -> NotReachedByTaylor
    | Some last ->
        match tokensTo last.Perplexity taylor.Points with
        | Interpolated t -> Measured(last.Tokens, t)
        | AtFirstPoint t -> AtLeast(last.Tokens, t)
        | NotReached -> NotReachedByTaylor

let describeRatio = function
    | Measured(n, t) when t > 0.0 -> $"naive needed {n} tokens to reach its final PPL; taylor-calibrate reached it after {t:F0} tokens: {float n / t:F1}x fewer"
    | Measured(n, _) | AtLeast(n, _) -> $"naive needed {n} tokens to reach its final PPL; taylor-calibrate was already there before any distillation: ratio unbounded (more than {n}/first checkpoint)"
    | NotReachedByTaylor -> "taylor-calibrate did not reach the naive student's final PPL within the budget"

/// The Stage-2 recipe both students share.
type Stage2Recipe =
    { /// Training tokens per student.
      Tokens: int64
      /// Tokens per row.
      SeqLen: int
      /// Rates of the parameters named "attn" (GDN and kept attention) and of the rest.
      LrAttention: float32
      LrRest: float32 }

/// Every figure of a demo run.
type DemoSummary =
    { Teacher: string
      KeptLayers: int list
      TeacherLayers: int
      EvalText: string
      EvalMaxTokens: int
      TeacherPerplexity: float
      NaivePerplexity: float
      TaylorPerplexity: float
      Stage2: Stage2Recipe
      Naive: Curve
      Taylor: Curve
      Ratio: TokenRatio
      /// (step, seconds) in the order they ran.
      StepSeconds: (string * float) list }

let private num (v: float) : JsonNode = if Double.IsFinite v then JsonValue.Create v else null

/// How many times further from the teacher the naive student starts than the Taylor-Calibrate one:
/// (PPL_naive − PPL_teacher) / (PPL_tc − PPL_teacher). On a small teacher whose converted layers carry
/// little of its PPL the ratio of PPLs stays near 1 while this one still shows the difference.
let gapRatio (s: DemoSummary) = (s.NaivePerplexity - s.TeacherPerplexity) / (s.TaylorPerplexity - s.TeacherPerplexity)

let private curveNode (c: Curve) : JsonNode =
    JsonNode.Parse(toJson c)

/// summary.json.
let toJson (s: DemoSummary) : string =
    let ratio =
        match s.Ratio with
        | Measured(n, t) -> JsonObject(dict [ "naive_tokens", JsonValue.Create n :> JsonNode; "taylor_calibrate_tokens", num t; "ratio", num (float n / t); "bound", JsonValue.Create false :> JsonNode ])
        | AtLeast(n, f) -> JsonObject(dict [ "naive_tokens", JsonValue.Create n :> JsonNode; "taylor_calibrate_tokens", JsonValue.Create f :> JsonNode; "ratio", (null: JsonNode); "bound", JsonValue.Create true :> JsonNode ])
        | NotReachedByTaylor -> JsonObject(dict [ "ratio", (null: JsonNode); "bound", JsonValue.Create false :> JsonNode ])
    let o = JsonObject()
    o["teacher"] <- JsonValue.Create s.Teacher
    o["teacher_layers"] <- JsonValue.Create s.TeacherLayers
    o["kept_layers"] <- JsonArray(s.KeptLayers |> List.map (fun l -> JsonValue.Create l :> JsonNode) |> Array.ofList)
    o["eval_text"] <- JsonValue.Create s.EvalText
    o["eval_max_tokens"] <- JsonValue.Create s.EvalMaxTokens
    o["zero_shot_perplexity"] <- JsonObject(dict [ "teacher", num s.TeacherPerplexity; "naive", num s.NaivePerplexity; "taylor_calibrate", num s.TaylorPerplexity ])
    o["naive_over_taylor_calibrate"] <- num (s.NaivePerplexity / s.TaylorPerplexity)
    o["gap_to_teacher_naive_over_taylor_calibrate"] <- num (gapRatio s)
    o["stage2_recipe"] <-
        JsonObject(dict [ "tokens", JsonValue.Create s.Stage2.Tokens :> JsonNode; "seq_len", JsonValue.Create s.Stage2.SeqLen
                          "lr_attention", JsonValue.Create(float s.Stage2.LrAttention); "lr_rest", JsonValue.Create(float s.Stage2.LrRest) ])
    o["stage2_curves"] <- JsonObject(dict [ "naive", curveNode s.Naive; "taylor_calibrate", curveNode s.Taylor ])
    o["token_ratio"] <- ratio
    o["token_ratio_text"] <- JsonValue.Create(describeRatio s.Ratio)
    o["step_seconds"] <- JsonObject(s.StepSeconds |> List.map (fun (k, v) -> Collections.Generic.KeyValuePair(k, num v)))
    o.ToJsonString(JsonSerializerOptions(WriteIndented = true))

/// The report's charts: zero-shot PPL bars and the two Stage-2 learning curves against the teacher.
let charts (s: DemoSummary) : SvgChart.Chart list =
    let xs (c: Curve) = c.Points |> List.map (fun p -> float p.Tokens) |> Array.ofList
    let ys (c: Curve) = c.Points |> List.map (fun p -> p.Perplexity) |> Array.ofList
    let teacherLine = let x = Array.append (xs s.Naive) (xs s.Taylor) in [| Array.min x; Array.max x |]
    [ SvgChart.bars "Zero-shot held-out perplexity" "PPL" true [| "teacher"; "naive"; "taylor-calibrate" |]
          [ "PPL", [| s.TeacherPerplexity; s.NaivePerplexity; s.TaylorPerplexity |] ]
      SvgChart.lines "Stage-2 distillation: held-out perplexity" "training tokens" "PPL" true
          [ "naive", xs s.Naive, ys s.Naive
            "taylor-calibrate", xs s.Taylor, ys s.Taylor
            "teacher", teacherLine, [| s.TeacherPerplexity; s.TeacherPerplexity |] ] ]

/// report.html: the figures as text, then the charts beside their tables (ReportHtml.page: no network resource).
let page (s: DemoSummary) : string =
    let html = ReportHtml.page "taylor-calibrate demo" (charts s)
    let enc (t: string) = Net.WebUtility.HtmlEncode t
    let intro =
        $"""<p>Teacher {enc s.Teacher} ({s.TeacherLayers} layers; attention kept in layer(s) {s.KeptLayers |> List.map string |> String.concat ", "}, the others converted to Gated DeltaNet).
Held-out text {enc (Path.GetFileName s.EvalText)} (first {s.EvalMaxTokens} tokens).</p>
<p>Zero-shot PPL: teacher {s.TeacherPerplexity:F3}, naive {s.NaivePerplexity:F3}, taylor-calibrate {s.TaylorPerplexity:F3} ({s.NaivePerplexity / s.TaylorPerplexity:F2}x lower than naive; the gap to the teacher is {gapRatio s:F1}x smaller).</p>
<p>Stage 2, the same recipe for both students: {s.Stage2.Tokens} tokens in rows of {s.Stage2.SeqLen}, constant rates {s.Stage2.LrAttention} (attention/GDN) and {s.Stage2.LrRest} (rest).</p>
<p>Token ratio: {enc (describeRatio s.Ratio)}.</p>"""
    let h1 = "<h1>taylor-calibrate demo</h1>"
    html.Replace(h1, h1 + "\n" + intro)

/// Writes summary.json, report.html and each chart's .svg + .json into `dir`.
let writeReport (dir: string) (s: DemoSummary) =
    AtomicFile.writeText (Path.Combine(dir, "summary.json")) (toJson s)
    AtomicFile.writeText (Path.Combine(dir, "report.html")) (page s)
    match charts s with
    | [ zeroShot; curves ] ->
        SvgChart.save (Path.Combine(dir, "zero-shot-ppl.svg")) zeroShot
        SvgChart.save (Path.Combine(dir, "stage2-curves.svg")) curves
    | _ -> ()
