/// report.html of a conversion and the ablation plot: alignment loss curves per layer, and per-head bars of
/// mean distance, entropy, Phase 1 targets and first/second-order Taylor errors. Plotly.NET 6.0.0 needs
/// FSharp.Core ≥ 10.1.403 while the solution pins 10.1.401, so the page emits plotly.js figure JSON
/// directly (same charts, no extra package).
module TaylorCalibrate.Pipeline.Report.ReportHtml

open System
open System.Net
open System.Text.Json
open System.Text.Json.Nodes

/// One plotly.js trace.
type Trace =
    | Line of name: string * xs: float[] * ys: float[]
    | Bars of name: string * keys: string[] * ys: float[]

let private num (x: float) : JsonNode = if Double.IsFinite x then JsonValue.Create x else null

let private traceJson (t: Trace) =
    let o = JsonObject()
    match t with
    | Line(name, xs, ys) ->
        o["type"] <- JsonValue.Create "scatter"
        o["mode"] <- JsonValue.Create "lines"
        o["name"] <- JsonValue.Create name
        o["x"] <- JsonArray(xs |> Array.map num)
        o["y"] <- JsonArray(ys |> Array.map num)
    | Bars(name, keys, ys) ->
        o["type"] <- JsonValue.Create "bar"
        o["name"] <- JsonValue.Create name
        o["x"] <- JsonArray(keys |> Array.map (fun k -> JsonValue.Create k :> JsonNode))
        o["y"] <- JsonArray(ys |> Array.map num)
    o :> JsonNode

/// A figure: title, traces, and whether the y axis is logarithmic.
type Figure = { Title: string; Traces: Trace list; LogY: bool }

let private figureHtml (i: int) (f: Figure) =
    let data = JsonArray(f.Traces |> List.map traceJson |> Array.ofList)
    let layout = JsonObject()
    layout["title"] <- JsonValue.Create f.Title
    layout["barmode"] <- JsonValue.Create "group"
    if f.LogY then
        let y = JsonObject()
        y["type"] <- JsonValue.Create "log"
        layout["yaxis"] <- y
    $"""<div id="fig{i}" style="width:100%%;height:420px"></div>
<script>Plotly.newPlot("fig{i}", {data.ToJsonString()}, {layout.ToJsonString()});</script>"""

/// A page of figures.
let page (title: string) (figures: Figure list) =
    let body = figures |> List.mapi figureHtml |> String.concat "\n"
    $"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{WebUtility.HtmlEncode title}</title>
<script src="https://cdn.plot.ly/plotly-2.27.1.min.js"></script></head>
<body><h1>{WebUtility.HtmlEncode title}</h1>
{body}
</body></html>"""

let private heads (ys: float[]) = ys |> Array.mapi (fun h _ -> $"head {h}")

/// The conversion report page.
let convertPage (r: ConvertReport.Report) : string =
    let losses =
        [ for e in r.Layers do
            match e.Convert.Alignment with
            | Some a -> yield Line($"layer {e.Convert.Layer}", Array.init a.Losses.Length float, a.Losses)
            | None -> () ]
    let lossFig = if losses.IsEmpty then [] else [ { Title = "Phase 2 alignment loss (MSE after o_proj) per step"; Traces = losses; LogY = true } ]
    let layerFigs =
        [ for e in r.Layers do
            let c = e.Convert
            yield { Title = $"layer {c.Layer}: attention statistics"; LogY = false
                    Traces = [ Bars("mean distance", heads c.MeanDistance, c.MeanDistance); Bars("entropy", heads c.Entropy, c.Entropy) ] }
            match c.Phase1 with
            | Some p ->
                yield { Title = $"layer {c.Layer}: Phase 1 (alpha = {p.Alpha:G3})"; LogY = false
                        Traces = [ Bars("target decay", heads p.TargetDecay, p.TargetDecay); Bars("beta target", heads p.BetaTarget, p.BetaTarget)
                                   Bars("sigma", heads p.Sigma, p.Sigma) ] }
            | None -> ()
            match e.Taylor with
            | Some t ->
                yield { Title = $"layer {c.Layer}: Taylor linear attention relative error"; LogY = true
                        Traces = [ Bars("first order", heads t.FirstOrder, t.FirstOrder); Bars("second order", heads t.SecondOrder, t.SecondOrder) ] }
            | None -> () ]
    page $"Taylor-Calibrate conversion: {r.Init}, kept {r.Kept}, GQA {r.GqaExpand}" (lossFig @ layerFigs)

/// A bar chart of zero-shot perplexities (log scale).
let ablationPage (title: string) (rows: (string * float) list) : string =
    page title [ { Title = title; LogY = true; Traces = [ Bars("zero-shot PPL", rows |> List.map fst |> Array.ofList, rows |> List.map snd |> Array.ofList) ] } ]
