/// Reports open offline: pages reference no URL, every chart draws something, each chart carries its
/// data as JSON, and standalone SVG files are well-formed with their data beside them.
module TaylorCalibrate.Tests.Report.ReportHtmlTests

open System
open System.IO
open System.Text.Json
open System.Text.RegularExpressions
open System.Xml.Linq
open Expecto
open TaylorCalibrate.Pipeline.Report
open TaylorCalibrate.Pipeline.Stages

let private layer (i: int) (aligned: bool) : ConvertReport.LayerEntry =
    { Convert =
        { Layer = i
          MeanDistance = [| 3.5; 7.25 |]
          Entropy = [| 1.2; 2.1 |]
          Phase1 = Some { TargetDecay = [| 0.9; 0.7 |]; Concentration = [| 0.5; 0.6 |]; BetaTarget = [| 0.4; 0.3 |]
                          SigmaRaw = [| 1.1; 0.2 |]; Sigma = [| 1.0; 0.2 |]; Alpha = 0.75 }
          Alignment =
            if aligned then Some { Layer = i; Losses = [| 1.0; 0.5; nan; 0.125; 0.1 |]; BestLoss = 0.1; BestStep = 4; GradNorms = [| 1.0; 1.0; 1.0; 1.0 |]; Seconds = 1.0 }
            else None
          Fit = { Mse = 0.1; Cosine = 0.99; MeanTokenCosine = 0.98 }
          Seconds = 2.0 }
      // A first-order error of +inf (denominator 0) must not break the log-scale chart.
      Taylor = Some { FirstOrder = [| 0.05; infinity |]; SecondOrder = [| 0.01; 0.002 |]; NonPositiveFirstOrder = [||] } }

let private report () : ConvertReport.Report =
    { Teacher = "teacher"; Init = "taylor-calibrate"; Kept = [ 0 ]; GqaExpand = "heads"; Seed = 0; Steps = 4
      Calibration = Some { Tokens = [||]; B = 1; T = 8; Source = "calib.txt"; Documents = 1; EvalSource = None; OverlappingDocuments = 0 }
      Layers = [ layer 1 true; layer 2 false ]; Timings = [ "convert", 1.0 ]; Device = "cpu" }

let private pages () =
    [ "convert", ReportHtml.convertPage (report ())
      "ablation", ReportHtml.ablationPage "Zero-shot PPL" [ "teacher", 12.5; "naive", 480.0; "taylor-calibrate", 40.0 ]
      "demo", Demo.page (TaylorCalibrate.Tests.Stages.DemoTests.sample ()) ]

let private svgs (html: string) = [ for m in Regex.Matches(html, "<svg[^>]*>.*?</svg>", RegexOptions.Singleline) -> m.Value ]

[<Tests>]
let tests =
    testList "Reports" [
        test "pages reference no external resource" {
            for name, html in pages () do
                for bad in [ "http:"; "https:"; "//cdn"; "src="; "href="; "@import"; "url(" ] do
                    Expect.isFalse (html.Contains(bad, StringComparison.OrdinalIgnoreCase)) $"{name} page contains '{bad}'"
                Expect.isFalse (html.Contains "plotly") $"{name}: no plotly" }

        test "every chart draws: non-empty line paths, bars of positive height, a title and a legend" {
            for name, html in pages () do
                let charts = svgs html
                Expect.isNonEmpty charts $"{name} has charts"
                for svg in charts do
                    let series = Regex.Matches(svg, "<(path|rect) class=\"series\"[^>]*>")
                    Expect.isGreaterThan series.Count 0 $"{name}: a chart without series"
                    for m in series do
                        if m.Value.StartsWith "<path" then
                            let d = Regex.Match(m.Value, "d=\"([^\"]*)\"").Groups[1].Value
                            Expect.isGreaterThanOrEqual (Regex.Matches(d, "[ML]").Count) 2 $"{name}: a path with fewer than two points: {d}"
                        else
                            let h = float (Regex.Match(m.Value, "height=\"([^\"]*)\"").Groups[1].Value)
                            Expect.isGreaterThan h 0.0 $"{name}: an empty bar"
                    Expect.stringContains svg "<title>" $"{name}: chart title"
                    Expect.isTrue (Regex.IsMatch(svg, "<text[^>]*>[^<]+</text>")) $"{name}: labels" }

        test "the NaN in a loss curve breaks the line; +inf on a log axis is left out" {
            let html = ReportHtml.convertPage (report ())
            let loss = svgs html |> List.find (fun s -> s.Contains "alignment loss")
            let d = Regex.Match(loss, "<path class=\"series\" d=\"([^\"]*)\"").Groups[1].Value
            Expect.equal (Regex.Matches(d, "M").Count) 2 "two pieces around the NaN"
            Expect.equal (Regex.Matches(d, "L").Count) 2 "four finite points: one segment each side"
            let taylor = svgs html |> List.find (fun s -> s.Contains "Taylor linear attention")
            Expect.equal (Regex.Matches(taylor, "<rect class=\"series\"").Count) 3 "four values, one infinite" }

        test "each chart carries its data as JSON, and the table shows the key figures" {
            let html = ReportHtml.ablationPage "Zero-shot PPL" [ "teacher", 12.5; "naive", 480.0 ]
            let data = [ for m in Regex.Matches(html, "<script type=\"application/json\" class=\"chart-data\">(.*?)</script>", RegexOptions.Singleline) -> m.Groups[1].Value ]
            Expect.equal data.Length ((svgs html).Length) "one JSON per chart"
            use doc = JsonDocument.Parse data.Head
            let values = (doc.RootElement.GetProperty "series").[0].GetProperty "values"
            Expect.equal [ for v in values.EnumerateArray() -> v.GetDouble() ] [ 12.5; 480.0 ] "values"
            Expect.stringContains html "<td>480</td>" "table cell" }

        test "ticks: 1-2-5 steps on a linear axis, decades (with 2 and 5 on short ranges) on a log axis" {
            Expect.equal (SvgChart.linearTicks 0.3 9.7) (0.0, 10.0, [| 0.0; 2.0; 4.0; 6.0; 8.0; 10.0 |]) "linear"
            Expect.equal (SvgChart.logTicks 0.03 4000.0) (0.01, 10000.0, [| 0.01; 0.1; 1.0; 10.0; 100.0; 1000.0; 10000.0 |]) "decades"
            Expect.equal (SvgChart.logTicks 12.5 480.0) (10.0, 500.0, [| 10.0; 20.0; 50.0; 100.0; 200.0; 500.0 |]) "short range"
            let lo, hi, _ = SvgChart.linearTicks 5.0 5.0
            Expect.isTrue (lo < 5.0 && hi > 5.0) "a constant series still gets a range" }

        test "save writes a well-formed standalone SVG and its data beside it; a chart without data is refused" {
            let dir = Path.Combine(Path.GetTempPath(), "tc-svg-" + Guid.NewGuid().ToString "N")
            Directory.CreateDirectory dir |> ignore
            let chart = SvgChart.lines "curve" "tokens" "PPL" true [ "a", [| 1.0; 2.0; 3.0 |], [| 100.0; 30.0; 20.0 |]; "b", [| 1.0; 3.0 |], [| 90.0; 15.0 |] ]
            let path = Path.Combine(dir, "curve.svg")
            SvgChart.save path chart
            let svg = XDocument.Parse(File.ReadAllText path)
            Expect.equal svg.Root.Name.LocalName "svg" "svg root"
            Expect.equal svg.Root.Name.NamespaceName "http://www.w3.org/2000/svg" "namespace for a standalone file"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "curve.json")))
            Expect.equal (doc.RootElement.GetProperty("series").GetArrayLength()) 2 "both series in the JSON"
            Expect.equal (doc.RootElement.GetProperty("log_y").GetBoolean()) true "log flag"
            let empty = SvgChart.lines "nothing" "x" "y" true [ "a", [| 1.0 |], [| -1.0 |] ]
            Expect.isFalse (SvgChart.hasData empty) "no drawable value on a log axis"
            Expect.throws (fun () -> SvgChart.render true empty |> ignore) "render refuses"
            Expect.stringContains (ReportHtml.page "p" [ empty ]) "No finite values to draw: nothing" "the page says so" }

        test "standalone pictures (distill's curve.svg, the demo's charts) name no resource but the SVG namespace, and draw" {
            let point tokens ppl : TaylorCalibrate.Pipeline.Distill.LearningCurve.CurvePoint =
                { Step = int tokens; Tokens = tokens; Perplexity = ppl; Loss = nan; HeldOutKl = nan }
            let curve : TaylorCalibrate.Pipeline.Distill.LearningCurve.Curve =
                { Stage = 2; TeacherPerplexity = 10.0; Points = [ point 0L 60.0; point 100L 30.0; point 200L 20.0 ] }
            let pictures =
                ("distill curve.svg", (TaylorCalibrate.Pipeline.Distill.LearningCurve.toSvg curve).Value)
                :: [ for ch in Demo.charts (TaylorCalibrate.Tests.Stages.DemoTests.sample ()) -> $"demo {ch.Title}", SvgChart.render true ch ]
            for name, svg in pictures do
                let withoutNamespace = svg.Replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
                for bad in [ "http:"; "https:"; "//cdn"; "src="; "href="; "@import"; "url(" ] do
                    Expect.isFalse (withoutNamespace.Contains(bad, StringComparison.OrdinalIgnoreCase)) $"{name} contains '{bad}'"
                let series = Regex.Matches(svg, "<(path|rect) class=\"series\"[^>]*>")
                Expect.isGreaterThan series.Count 0 $"{name}: no series drawn" }
    ]
