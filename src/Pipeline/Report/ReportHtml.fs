/// report.html of a conversion and the ablation page: alignment loss curves per layer, and per-head bars of
/// mean distance, entropy, Phase 1 targets and first/second-order Taylor errors. Pages are self-contained:
/// charts are inline SVG (SvgChart), each beside a table of its key figures and its data as embedded JSON,
/// with no script to run and nothing to fetch, so they read the same offline.
module TaylorCalibrate.Pipeline.Report.ReportHtml

open System
open System.Net
open System.Text
open TaylorCalibrate.Pipeline.Report.SvgChart

let private esc (s: string) = WebUtility.HtmlEncode s
let private cell (v: float) = if Double.IsFinite v then v.ToString("G5", Globalization.CultureInfo.InvariantCulture) else "–"

/// The key figures of a chart as an HTML table: per line its points, first, last and lowest value; for
/// bars every value (category by series).
let keyTable (ch: Chart) : string =
    let sb = StringBuilder()
    let row (cells: string seq) (tag: string) =
        sb.Append("<tr>") |> ignore
        for x in cells do sb.Append($"<{tag}>{x}</{tag}>") |> ignore
        sb.Append("</tr>\n") |> ignore
    sb.Append("<table>\n") |> ignore
    match ch.Plot with
    | Lines ss ->
        row [ "series"; "points"; "first"; "last"; "lowest"; $"at {esc ch.XLabel}" ] "th"
        for s in ss do
            let finite = Array.zip s.Xs s.Ys |> Array.filter (fun (x, y) -> Double.IsFinite x && Double.IsFinite y)
            if finite.Length = 0 then row [ esc s.Name; "0"; "–"; "–"; "–"; "–" ] "td"
            else
                let lx, ly = finite |> Array.minBy snd
                row [ esc s.Name; string finite.Length; cell (snd finite[0]); cell (snd finite[finite.Length - 1]); cell ly; cell lx ] "td"
    | Bars(cats, ss) ->
        row ("" :: [ for s in ss -> esc s.Name ]) "th"
        cats |> Array.iteri (fun k cat -> row (esc cat :: [ for s in ss -> if k < s.Values.Length then cell s.Values[k] else "–" ]) "td")
    sb.Append("</table>").ToString()

/// One chart with its table and data.
let private figureHtml (ch: Chart) =
    $"""<section class="figure">
<div class="picture">
{render false ch}</div>
<div class="figures">
{keyTable ch}
<details><summary>data (JSON)</summary><pre>{esc (toJson ch)}</pre></details>
</div>
<script type="application/json" class="chart-data">{(toJsonNode ch).ToJsonString()}</script>
</section>"""

let private style = """<style>
body { font-family: sans-serif; margin: 1.5em; }
.figure { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; margin-bottom: 2em; }
.picture svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { max-height: 20em; overflow: auto; font-size: 11px; }
</style>"""

/// A page of charts (those without any finite value are listed as empty instead of drawn).
let page (title: string) (charts: Chart list) =
    let drawn, empty = charts |> List.partition hasData
    let body = drawn |> List.map figureHtml |> String.concat "\n"
    let emptyNote =
        if empty.IsEmpty then ""
        else "<p>No finite values to draw: " + (empty |> List.map (fun ch -> esc ch.Title) |> String.concat "; ") + ".</p>"
    $"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{esc title}</title>
{style}</head>
<body><h1>{esc title}</h1>
{body}
{emptyNote}
</body></html>"""

let private heads (ys: float[]) = ys |> Array.mapi (fun h _ -> $"head {h}")

/// The charts of a conversion report.
let convertCharts (r: ConvertReport.Report) : Chart list =
    let losses =
        [ for e in r.Layers do
            match e.Convert.Alignment with
            | Some a -> yield $"layer {e.Convert.Layer}", Array.init a.Losses.Length float, a.Losses
            | None -> () ]
    let lossChart = if losses.IsEmpty then [] else [ lines "Phase 2 alignment loss (MSE after o_proj) per step" "step" "MSE" true losses ]
    let layerCharts =
        [ for e in r.Layers do
            let c = e.Convert
            yield bars $"layer {c.Layer}: attention statistics" "value" false (heads c.MeanDistance)
                      [ "mean distance", c.MeanDistance; "entropy", c.Entropy ]
            match c.Phase1 with
            | Some p ->
                yield bars $"layer {c.Layer}: Phase 1 (alpha = {p.Alpha:G3})" "value" false (heads p.TargetDecay)
                          [ "target decay", p.TargetDecay; "beta target", p.BetaTarget; "sigma", p.Sigma ]
            | None -> ()
            match e.Taylor with
            | Some t ->
                yield bars $"layer {c.Layer}: Taylor linear attention relative error" "relative error" true (heads t.FirstOrder)
                          [ "first order", t.FirstOrder; "second order", t.SecondOrder ]
            | None -> () ]
    lossChart @ layerCharts

/// The conversion report page.
let convertPage (r: ConvertReport.Report) : string =
    let measured = if r.Calibration.IsNone then " (no calibration text: nothing measured)" else ""
    page $"Taylor-Calibrate conversion: {r.Init}, kept {r.Kept}, GQA {r.GqaExpand}{measured}" (convertCharts r)

/// The ablation chart: zero-shot perplexities as bars (log scale).
let ablationChart (title: string) (rows: (string * float) list) : Chart =
    bars title "perplexity" true (rows |> List.map fst |> Array.ofList) [ "zero-shot PPL", rows |> List.map snd |> Array.ofList ]

/// A page with the ablation chart and its table.
let ablationPage (title: string) (rows: (string * float) list) : string =
    page title [ ablationChart title rows ]
