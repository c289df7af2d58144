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

let private inv (v: float) = v.ToString("0.##", CultureInfo.InvariantCulture)

let private esc (s: string) = s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;")

/// Round tick values covering [lo, hi].
let private ticks (lo: float) (hi: float) =
    let span = max (hi - lo) 1e-12
    let raw = span / 5.0
    let mag = Math.Pow(10.0, floor (log10 raw))
    let step = [ 1.0; 2.0; 5.0; 10.0 ] |> List.map (fun m -> m * mag) |> List.find (fun s -> s >= raw)
    [ for k in ceil (lo / step) .. floor (hi / step) -> k * step ]

/// One polyline chart: series of (x, y) points, log-scaled y when `logY`; horizontal reference lines.
let chart (title: string) (xLabel: string) (yLabel: string) (logY: bool)
          (series: (string * (float * float) list) list) (refs: (string * float) list) : string =
    let W, H, left, right, top, bottom = 640.0, 380.0, 64.0, 170.0, 36.0, 48.0
    let all = series |> List.collect snd |> List.filter (fun (x, y) -> Double.IsFinite x && Double.IsFinite y && (not logY || y > 0.0))
    let ys = (all |> List.map snd) @ (refs |> List.map snd |> List.filter Double.IsFinite)
    let sb = StringBuilder()
    let add (s: string) = sb.Append(s).Append('\n') |> ignore
    add $"""<svg xmlns="http://www.w3.org/2000/svg" width="{inv W}" height="{inv H}" viewBox="0 0 {inv W} {inv H}" font-family="sans-serif" font-size="11">"""
    add $"""<rect width="{inv W}" height="{inv H}" fill="white"/>"""
    add $"""<text x="{inv (W / 2.0)}" y="18" text-anchor="middle" font-size="13">{esc title}</text>"""
    if all.IsEmpty then add """<text x="20" y="60">no data</text>"""
    else
        let xs = all |> List.map fst
        let x0, x1 = List.min xs, max (List.max xs) (List.min xs + 1.0)
        let fy (y: float) = if logY then log10 y else y
        let y0, y1 =
            let lo, hi = ys |> List.map fy |> List.min, ys |> List.map fy |> List.max
            let pad = max ((hi - lo) * 0.05) 1e-3
            lo - pad, hi + pad
        let px (x: float) = left + (x - x0) / (x1 - x0) * (W - left - right)
        let py (y: float) = top + (1.0 - (fy y - y0) / (y1 - y0)) * (H - top - bottom)
        add $"""<rect x="{inv left}" y="{inv top}" width="{inv (W - left - right)}" height="{inv (H - top - bottom)}" fill="none" stroke="#888"/>"""
        for t in ticks x0 x1 do
            add $"""<line x1="{inv (px t)}" y1="{inv (H - bottom)}" x2="{inv (px t)}" y2="{inv (H - bottom + 4.0)}" stroke="#888"/><text x="{inv (px t)}" y="{inv (H - bottom + 16.0)}" text-anchor="middle">{inv t}</text>"""
        let yTicks = if logY then ticks y0 y1 |> List.map (fun e -> Math.Pow(10.0, e)) else ticks y0 y1
        let yTicks = if logY && yTicks.Length < 3 then [ for k in 0 .. 4 -> Math.Pow(10.0, y0 + float k * (y1 - y0) / 4.0) ] else yTicks
        for t in yTicks do
            add $"""<line x1="{inv (left - 4.0)}" y1="{inv (py t)}" x2="{inv (W - right)}" y2="{inv (py t)}" stroke="#eee"/><text x="{inv (left - 6.0)}" y="{inv (py t + 4.0)}" text-anchor="end">{inv t}</text>"""
        add $"""<text x="{inv ((left + W - right) / 2.0)}" y="{inv (H - 10.0)}" text-anchor="middle">{esc xLabel}</text>"""
        add $"""<text transform="translate(14,{inv ((top + H - bottom) / 2.0)}) rotate(-90)" text-anchor="middle">{esc yLabel}</text>"""
        for name, y in refs do
            if Double.IsFinite y && (not logY || y > 0.0) then
                add $"""<line x1="{inv left}" y1="{inv (py y)}" x2="{inv (W - right)}" y2="{inv (py y)}" stroke="#999" stroke-dasharray="4 3"/><text x="{inv (W - right + 4.0)}" y="{inv (py y + 4.0)}" fill="#666">{esc name}</text>"""
        let colours = [| "#1f77b4"; "#d62728"; "#2ca02c"; "#9467bd"; "#ff7f0e" |]
        for k, (name, pts) in List.indexed series do
            let pts = pts |> List.filter (fun (x, y) -> Double.IsFinite x && Double.IsFinite y && (not logY || y > 0.0))
            let colour = colours[k % colours.Length]
            let path = pts |> List.map (fun (x, y) -> $"{inv (px x)},{inv (py y)}") |> String.concat " "
            add $"""<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>"""
            for x, y in pts do add $"""<circle cx="{inv (px x)}" cy="{inv (py y)}" r="2.5" fill="{colour}"/>"""
            add $"""<text x="{inv (W - right + 4.0)}" y="{inv (top + 14.0 + 16.0 * float k)}" fill="{colour}">{esc name}</text>"""
    add "</svg>"
    sb.ToString()

/// The run's picture: held-out PPL against tokens (log scale), with the teacher and 1.25× the teacher.
let toSvg (c: Curve) : string =
    let ppl = c.Points |> List.map (fun p -> float p.Tokens, p.Perplexity)
    let refs = if Double.IsFinite c.TeacherPerplexity then [ "teacher", c.TeacherPerplexity; "1.25x teacher", 1.25 * c.TeacherPerplexity ] else []
    chart $"Stage {c.Stage}: held-out perplexity" "training tokens" "perplexity" true [ "student", ppl ] refs
