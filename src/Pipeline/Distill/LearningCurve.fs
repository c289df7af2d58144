/// The learning curve of a distillation run: held-out perplexity (Eval/Perplexity.fs protocol) and the mean
/// training loss at each checkpoint against the training tokens seen, written as JSON and as an inline SVG
/// chart that needs nothing else to display. Tokens-to-target (docs/method.md §8): the tokens a run needs to
/// reach a target PPL, interpolated linearly between the checkpoints that bracket it.
module TaylorCalibrate.Pipeline.Distill.LearningCurve

open System
open System.Globalization
open System.Text
open System.Text.Json
open System.Text.Json.Nodes

/// One evaluation of the student.
type CurvePoint =
    { Step: int
      /// Training tokens seen (B·T per micro-batch, inputs only).
      Tokens: int64
      /// Held-out perplexity; NaN when no evaluation text was given.
      Perplexity: float
      /// Mean training loss of the steps since the previous point (NaN at step 0).
      Loss: float
      /// Mean KL(teacher‖student) per held-out position (NaN when not measured).
      HeldOutKl: float }

/// A run's curve.
type Curve =
    { Stage: int
      /// The teacher's PPL on the same held-out set (NaN when none).
      TeacherPerplexity: float
      Points: CurvePoint list }

/// Where a curve first reaches `target` or below.
type Crossing =
    /// The first point (usually step 0, before training) is already at or below the target.
    | AtFirstPoint of tokens: int64
    /// Linear interpolation between the two points that bracket the target.
    | Interpolated of tokens: float
    | NotReached

/// Tokens at which the PPL curve first falls to `target`, interpolated linearly between checkpoints.
let tokensTo (target: float) (points: CurvePoint list) : Crossing =
    let pts = points |> List.filter (fun p -> not (Double.IsNaN p.Perplexity))
    match pts with
    | [] -> NotReached
    | first :: _ when first.Perplexity <= target -> AtFirstPoint first.Tokens
    | _ ->
        pts |> List.pairwise |> List.tryPick (fun (a, b) ->
            if b.Perplexity <= target then
                let f = (a.Perplexity - target) / (a.Perplexity - b.Perplexity)
                Some(Interpolated(float a.Tokens + f * float (b.Tokens - a.Tokens)))
            else None)
        |> Option.defaultValue NotReached

let private num (v: float) : JsonNode = if Double.IsFinite v then JsonValue.Create v else null

/// The curve as JSON: stage, teacher PPL, points, and the tokens to 1.10–1.25× the teacher's PPL.
let toJson (c: Curve) : string =
    let o = JsonObject()
    o["stage"] <- JsonValue.Create c.Stage
    o["teacher_perplexity"] <- num c.TeacherPerplexity
    let pts = JsonArray()
    for p in c.Points do
        let e = JsonObject()
        e["step"] <- JsonValue.Create p.Step
        e["tokens"] <- JsonValue.Create p.Tokens
        e["perplexity"] <- num p.Perplexity
        e["loss"] <- num p.Loss
        e["held_out_kl"] <- num p.HeldOutKl
        pts.Add e
    o["points"] <- pts
    if Double.IsFinite c.TeacherPerplexity then
        let targets = JsonArray()
        for f in [ 1.10; 1.15; 1.20; 1.25 ] do
            let e = JsonObject()
            e["factor"] <- JsonValue.Create f
            e["target_perplexity"] <- JsonValue.Create(f * c.TeacherPerplexity)
            match tokensTo (f * c.TeacherPerplexity) c.Points with
            | AtFirstPoint t -> e["tokens"] <- JsonValue.Create(float t); e["at_first_point"] <- JsonValue.Create true
            | Interpolated t -> e["tokens"] <- JsonValue.Create t
            | NotReached -> e["tokens"] <- null
            targets.Add e
        o["tokens_to_target"] <- targets
    o.ToJsonString(JsonSerializerOptions(WriteIndented = true))

/// Reads toJson's points and teacher PPL back (for a resumed run).
let ofJson (json: string) : Curve =
    let o = JsonNode.Parse(json).AsObject()
    let f (n: JsonNode) = match n with null -> nan | n -> n.GetValue<float>()
    { Stage = o["stage"].GetValue<int>()
      TeacherPerplexity = f o["teacher_perplexity"]
      Points =
        [ for e in o["points"].AsArray() ->
            { Step = e["step"].GetValue<int>(); Tokens = e["tokens"].GetValue<int64>(); Perplexity = f e["perplexity"]
              Loss = f e["loss"]; HeldOutKl = f e["held_out_kl"] } ] }

/// The run's picture: held-out PPL against tokens (log scale), with the teacher and 1.25× the teacher as
/// flat reference series; without an evaluation text, the mean training loss against tokens instead. None
/// while the curve has no finite value to draw (a run without evaluation text, before its first step).
/// Drawn by the project's one chart module (Report/SvgChart.fs).
let toChart (c: Curve) : TaylorCalibrate.Pipeline.Report.SvgChart.Chart option =
    let finite (ys: float[]) = ys |> Array.exists Double.IsFinite
    let xs = c.Points |> List.map (fun p -> float p.Tokens) |> Array.ofList
    let ppl = c.Points |> List.map (fun p -> p.Perplexity) |> Array.ofList
    let loss = c.Points |> List.map (fun p -> p.Loss) |> Array.ofList
    if finite ppl then
        let span = [| Array.min xs; Array.max xs |]
        let flat (v: float) = Array.map (fun _ -> v) span
        let refs =
            if Double.IsFinite c.TeacherPerplexity then
                [ "teacher", span, flat c.TeacherPerplexity; "1.25x teacher", span, flat (1.25 * c.TeacherPerplexity) ]
            else []
        Some(TaylorCalibrate.Pipeline.Report.SvgChart.lines $"Stage {c.Stage}: held-out perplexity" "training tokens" "perplexity" true
                 (("student", xs, ppl) :: refs))
    elif finite loss then
        // No evaluation text: the training loss is the only curve there is.
        let keep = Array.zip xs loss |> Array.filter (snd >> Double.IsFinite)
        Some(TaylorCalibrate.Pipeline.Report.SvgChart.lines $"Stage {c.Stage}: training loss (no evaluation text)" "training tokens" "loss" true
                 [ "training loss", Array.map fst keep, Array.map snd keep ])
    else None

/// The run's picture as a standalone SVG document (None: see toChart).
let toSvg (c: Curve) : string option = toChart c |> Option.map (TaylorCalibrate.Pipeline.Report.SvgChart.render true)
