/// Line and grouped-bar charts as plain SVG text, with no script and no external resource, so that reports
/// open offline and pictures can be committed as .svg files. A chart has a title, axis labels, ticks (1-2-5
/// steps on a linear axis, decades and their 2 and 5 multiples on a log axis), a legend, several series,
/// and optional markers. Non-finite values (and non-positive ones on a log axis) are not drawn: a line
/// breaks there.
module TaylorCalibrate.Pipeline.Report.SvgChart

open System
open System.Globalization
open System.IO
open System.Net
open System.Text
open System.Text.Json
open System.Text.Json.Nodes

/// One line: points (Xs[i], Ys[i]).
type LineSeries = { Name: string; Xs: float[]; Ys: float[]; Markers: bool }

/// One bar per category.
type BarSeries = { Name: string; Values: float[] }

/// What a chart draws.
type Plot =
    | Lines of LineSeries list
    /// Grouped bars: one group per category, one bar per series in each group.
    | Bars of categories: string[] * BarSeries list

/// A chart.
type Chart =
    { Title: string
      XLabel: string
      YLabel: string
      LogY: bool
      Plot: Plot }

/// A line chart (markers on every point when there are few).
let lines (title: string) (xLabel: string) (yLabel: string) (logY: bool) (series: (string * float[] * float[]) list) =
    { Title = title; XLabel = xLabel; YLabel = yLabel; LogY = logY
      Plot = Lines [ for n, xs, ys in series -> { Name = n; Xs = xs; Ys = ys; Markers = xs.Length <= 40 } ] }

/// A grouped bar chart.
let bars (title: string) (yLabel: string) (logY: bool) (categories: string[]) (series: (string * float[]) list) =
    { Title = title; XLabel = ""; YLabel = yLabel; LogY = logY
      Plot = Bars(categories, [ for n, v in series -> { Name = n; Values = v } ]) }

let private palette = [| "#1f77b4"; "#d62728"; "#2ca02c"; "#ff7f0e"; "#9467bd"; "#8c564b"; "#e377c2"; "#7f7f7f"; "#17becf"; "#bcbd22" |]
let private colour i = palette[i % palette.Length]

let private inv = CultureInfo.InvariantCulture
/// Coordinates with two decimals: exact enough for a picture, short enough to keep files small.
let private c (x: float) = x.ToString("0.##", inv)
let private esc (s: string) = WebUtility.HtmlEncode s

/// A tick label: plain for ordinary magnitudes, scientific otherwise.
let label (v: float) =
    let a = abs v
    if v = 0.0 then "0"
    elif a >= 1e5 || a < 1e-3 then v.ToString("0.##e+0", inv)
    else v.ToString("0.####", inv)

/// Whether a value can be drawn on the axis.
let private drawable (logY: bool) (v: float) = Double.IsFinite v && (not logY || v > 0.0)

/// Ticks of a linear axis covering [lo, hi]: multiples of 1, 2 or 5 × 10^k, about five of them; the axis
/// is widened to the outer ticks.
let linearTicks (lo: float) (hi: float) : float * float * float[] =
    let lo, hi = if hi > lo then lo, hi elif lo = 0.0 then -1.0, 1.0 else lo - abs lo * 0.1, hi + abs hi * 0.1
    let raw = (hi - lo) / 5.0
    let mag = Math.Pow(10.0, floor (log10 raw))
    let step = [ 1.0; 2.0; 5.0; 10.0 ] |> List.map (fun m -> m * mag) |> List.find (fun s -> s >= raw)
    let first = floor (lo / step) * step
    let last = ceil (hi / step) * step
    let n = int (round ((last - first) / step))
    first, last, Array.init (n + 1) (fun i -> first + float i * step)

/// Ticks of a log axis covering [lo, hi] (both > 0): whole decades, with 2 and 5 multiples when the range
/// spans fewer than three decades.
let logTicks (lo: float) (hi: float) : float * float * float[] =
    let d0 = floor (log10 lo)
    let d1 = max (ceil (log10 hi)) (d0 + 1.0)
    let decades = [| for d in d0 .. d1 -> Math.Pow(10.0, d) |]
    let ticks =
        if d1 - d0 >= 3.0 then decades
        else [| for d in decades do yield d; yield 2.0 * d; yield 5.0 * d |] |> Array.filter (fun t -> t <= Math.Pow(10.0, d1))
    // Trim to the data, keeping one tick beyond each end.
    let below = ticks |> Array.filter (fun t -> t <= lo) |> Array.tryLast |> Option.defaultValue ticks[0]
    let above = ticks |> Array.filter (fun t -> t >= hi) |> Array.tryHead |> Option.defaultValue ticks[ticks.Length - 1]
    below, above, ticks |> Array.filter (fun t -> t >= below && t <= above)

/// Whether the chart has anything to draw.
let hasData (ch: Chart) =
    match ch.Plot with
    | Lines ss -> ss |> List.exists (fun s -> Array.exists2 (fun x y -> Double.IsFinite x && drawable ch.LogY y) s.Xs s.Ys)
    | Bars(cats, ss) -> cats.Length > 0 && ss |> List.exists (fun s -> s.Values |> Array.exists (drawable ch.LogY))

let private width, height = 720.0, 380.0
let private left, right, top, bottom = 72.0, 20.0, 58.0, 56.0

/// The chart as an <svg> element. `standalone` adds the XML namespace a .svg file needs (inline SVG in
/// HTML needs none, and a report must not mention any URL).
let render (standalone: bool) (ch: Chart) : string =
    if not (hasData ch) then invalidArg "ch" $"chart '{ch.Title}' has no finite values to draw"
    let sb = StringBuilder()
    let add (s: string) = sb.Append(s).Append('\n') |> ignore
    let ys =
        match ch.Plot with
        | Lines ss -> ss |> Seq.collect (fun s -> s.Ys) |> Seq.filter (drawable ch.LogY) |> Array.ofSeq
        | Bars(_, ss) -> ss |> Seq.collect (fun s -> s.Values) |> Seq.filter (drawable ch.LogY) |> Array.ofSeq
    let yLo, yHi, yTicks =
        if ch.LogY then logTicks (Array.min ys) (Array.max ys)
        else
            match ch.Plot with
            | Bars _ -> linearTicks (min 0.0 (Array.min ys)) (max 0.0 (Array.max ys))   // bars start at zero
            | Lines _ -> linearTicks (Array.min ys) (Array.max ys)
    let plotW, plotH = width - left - right, height - top - bottom
    let yPos (v: float) =
        let f = if ch.LogY then (log10 v - log10 yLo) / (log10 yHi - log10 yLo) else (v - yLo) / (yHi - yLo)
        top + plotH * (1.0 - f)
    let xmlns = if standalone then " xmlns=\"http://www.w3.org/2000/svg\"" else ""
    add $"""<svg{xmlns} class="chart" viewBox="0 0 {c width} {c height}" width="{c width}" height="{c height}" role="img" font-family="sans-serif" font-size="12">"""
    add $"""<title>{esc ch.Title}</title>"""
    add $"""<rect x="0" y="0" width="{c width}" height="{c height}" fill="white"/>"""
    add $"""<text x="{c (width / 2.0)}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{esc ch.Title}</text>"""
    // Y axis: grid lines, ticks, labels.
    for t in yTicks do
        let y = yPos t
        add $"""<line x1="{c left}" y1="{c y}" x2="{c (width - right)}" y2="{c y}" stroke="#e0e0e0"/>"""
        add $"""<text x="{c (left - 6.0)}" y="{c (y + 4.0)}" text-anchor="end">{esc (label t)}</text>"""
    add $"""<text transform="translate(16 {c (top + plotH / 2.0)}) rotate(-90)" text-anchor="middle">{esc ch.YLabel}{(if ch.LogY then " (log scale)" else "")}</text>"""
    // X axis and the series.
    let names =
        match ch.Plot with
        | Lines ss ->
            let xs = ss |> Seq.collect (fun s -> Seq.zip s.Xs s.Ys |> Seq.filter (fun (x, y) -> Double.IsFinite x && drawable ch.LogY y) |> Seq.map fst) |> Array.ofSeq
            let xLo, xHi, xTicks = linearTicks (Array.min xs) (Array.max xs)
            let xPos (v: float) = left + plotW * (v - xLo) / (xHi - xLo)
            for t in xTicks do
                let x = xPos t
                add $"""<line x1="{c x}" y1="{c (top + plotH)}" x2="{c x}" y2="{c (top + plotH + 5.0)}" stroke="black"/>"""
                add $"""<text x="{c x}" y="{c (top + plotH + 18.0)}" text-anchor="middle">{esc (label t)}</text>"""
            ss |> List.iteri (fun i s ->
                let d = StringBuilder()
                let mutable pen = false
                for k in 0 .. min s.Xs.Length s.Ys.Length - 1 do
                    if Double.IsFinite s.Xs[k] && drawable ch.LogY s.Ys[k] then
                        d.Append(if pen then " L" else " M").Append(c (xPos s.Xs[k])).Append(' ').Append(c (yPos s.Ys[k])) |> ignore
                        pen <- true
                    else pen <- false
                if d.Length > 0 then
                    add $"""<path class="series" d="{d.ToString().Trim()}" fill="none" stroke="{colour i}" stroke-width="2"><title>{esc s.Name}</title></path>"""
                if s.Markers then
                    for k in 0 .. min s.Xs.Length s.Ys.Length - 1 do
                        if Double.IsFinite s.Xs[k] && drawable ch.LogY s.Ys[k] then
                            add $"""<circle class="marker" cx="{c (xPos s.Xs[k])}" cy="{c (yPos s.Ys[k])}" r="3" fill="{colour i}"><title>{esc s.Name}: {esc (label s.Xs[k])}, {esc (label s.Ys[k])}</title></circle>""")
            ss |> List.map (fun s -> s.Name)
        | Bars(cats, ss) ->
            let slot = plotW / float cats.Length
            let groupW = slot * 0.8
            let barW = groupW / float (max 1 ss.Length)
            let baseY = if ch.LogY then yPos yLo else yPos (max yLo (min yHi 0.0))
            cats |> Array.iteri (fun k cat ->
                let x = left + slot * (float k + 0.5)
                add $"""<text x="{c x}" y="{c (top + plotH + 18.0)}" text-anchor="middle">{esc cat}</text>""")
            ss |> List.iteri (fun i s ->
                s.Values |> Array.iteri (fun k v ->
                    if k < cats.Length && drawable ch.LogY v then
                        let x = left + slot * float k + (slot - groupW) / 2.0 + barW * float i
                        let y = yPos v
                        let y0, h = min y baseY, max 0.5 (abs (baseY - y))
                        add $"""<rect class="series" x="{c x}" y="{c y0}" width="{c (barW * 0.92)}" height="{c h}" fill="{colour i}"><title>{esc s.Name}, {esc cats[k]}: {esc (label v)}</title></rect>"""))
            ss |> List.map (fun s -> s.Name)
    // Axis lines over the grid, then the x label and the legend.
    add $"""<line x1="{c left}" y1="{c top}" x2="{c left}" y2="{c (top + plotH)}" stroke="black"/>"""
    add $"""<line x1="{c left}" y1="{c (top + plotH)}" x2="{c (width - right)}" y2="{c (top + plotH)}" stroke="black"/>"""
    if ch.XLabel <> "" then
        add $"""<text x="{c (left + plotW / 2.0)}" y="{c (height - 14.0)}" text-anchor="middle">{esc ch.XLabel}</text>"""
    let mutable lx = left
    let mutable ly = 38.0
    names |> List.iteri (fun i n ->
        let w = 22.0 + 7.0 * float n.Length
        if lx + w > width - right then
            lx <- left
            ly <- ly + 14.0
        add $"""<rect x="{c lx}" y="{c (ly - 9.0)}" width="12" height="10" fill="{colour i}"/>"""
        add $"""<text x="{c (lx + 16.0)}" y="{c ly}">{esc n}</text>"""
        lx <- lx + w)
    add "</svg>"
    sb.ToString()

let private num (x: float) : JsonNode = if Double.IsFinite x then JsonValue.Create x else null

/// The chart's data as JSON (non-finite values as null).
let toJsonNode (ch: Chart) : JsonObject =
    let o = JsonObject()
    o["title"] <- JsonValue.Create ch.Title
    o["x_label"] <- JsonValue.Create ch.XLabel
    o["y_label"] <- JsonValue.Create ch.YLabel
    o["log_y"] <- JsonValue.Create ch.LogY
    match ch.Plot with
    | Lines ss ->
        o["kind"] <- JsonValue.Create "lines"
        o["series"] <- JsonArray([| for s in ss ->
                                      let e = JsonObject()
                                      e["name"] <- JsonValue.Create s.Name
                                      e["x"] <- JsonArray(s.Xs |> Array.map num)
                                      e["y"] <- JsonArray(s.Ys |> Array.map num)
                                      e :> JsonNode |])
    | Bars(cats, ss) ->
        o["kind"] <- JsonValue.Create "bars"
        o["categories"] <- JsonArray(cats |> Array.map (fun k -> JsonValue.Create k :> JsonNode))
        o["series"] <- JsonArray([| for s in ss ->
                                      let e = JsonObject()
                                      e["name"] <- JsonValue.Create s.Name
                                      e["values"] <- JsonArray(s.Values |> Array.map num)
                                      e :> JsonNode |])
    o

/// The chart's data as indented JSON text.
let toJson (ch: Chart) : string = (toJsonNode ch).ToJsonString(JsonSerializerOptions(WriteIndented = true))

/// Writes the chart as a standalone .svg at `path` and its data beside it (same name, .json), each
/// atomically.
let save (path: string) (ch: Chart) =
    TaylorCalibrate.Pipeline.Io.AtomicFile.writeText path (render true ch)
    TaylorCalibrate.Pipeline.Io.AtomicFile.writeText (Path.ChangeExtension(path, ".json")) (toJson ch)
