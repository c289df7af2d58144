/// The demo's own pieces: the output folder it may replace, the document split of its corpus, the token
/// ratio of two learning curves, and its report (figures, JSON, offline page).
module TaylorCalibrate.Tests.Stages.DemoTests

open System
open System.IO
open System.Text.Json
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Data
open TaylorCalibrate.Pipeline.Distill.LearningCurve
open TaylorCalibrate.Pipeline.Stages

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "tc-demo-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d

let private point tokens ppl = { Step = int (tokens / 100L); Tokens = tokens; Perplexity = ppl; Loss = nan; HeldOutKl = nan }
let private curve (pts: (int64 * float) list) = { Stage = 2; TeacherPerplexity = 10.0; Points = [ for t, p in pts -> point t p ] }

let sample () : Demo.DemoSummary =
    let naive = curve [ 0L, 400.0; 500L, 60.0; 1000L, 40.0 ]
    let taylor = curve [ 0L, 80.0; 500L, 30.0; 1000L, 20.0 ]
    { Teacher = "models/demo-teacher"; KeptLayers = [ 0 ]; TeacherLayers = 4; EvalText = "eval.txt"; EvalMaxTokens = 1024
      TeacherPerplexity = 10.0; NaivePerplexity = 400.0; TaylorPerplexity = 80.0
      Stage2 = { Tokens = 1000L; SeqLen = 100; LrAttention = 1e-3f; LrRest = 1e-4f }; Naive = naive; Taylor = taylor
      Ratio = Demo.tokenRatio naive taylor; StepSeconds = [ "convert", 1.5; "total", 3.0 ] }

[<Tests>]
let tests =
    testList "Demo" [
        testList "output folder" [
            test "a folder with someone else's files is refused and left as it was" {
                let d = tempDir ()
                let mine = Path.Combine(d, "notes.txt")
                File.WriteAllText(mine, "keep me")
                match Demo.prepareOut d [] with
                | Error(InvalidOption("--out", why)) -> Expect.stringContains why "not empty" "says why"
                | other -> failtestf "expected a refusal, got %A" other
                Expect.equal (File.ReadAllText mine) "keep me" "untouched"
                Directory.Delete(d, true) }
            test "a new folder is created with the marker; an earlier demo's folder is replaced" {
                let d = Path.Combine(tempDir (), "out")
                Expect.equal (Demo.prepareOut d []) (Ok()) "created"
                Expect.isTrue (File.Exists(Path.Combine(d, Demo.markerName))) "marked"
                File.WriteAllText(Path.Combine(d, "old-result.json"), "{}")
                Expect.equal (Demo.prepareOut d []) (Ok()) "an earlier demo's folder"
                Expect.isFalse (File.Exists(Path.Combine(d, "old-result.json"))) "its old files are gone"
                Directory.Delete(Path.GetDirectoryName d, true) }
            test "an earlier demo's folder that holds this run's own input is refused and left as it was" {
                let d = Path.Combine(tempDir (), "out")
                Expect.equal (Demo.prepareOut d []) (Ok()) "an earlier demo's folder"
                let calib = Path.Combine(d, "calib.txt")
                File.WriteAllText(calib, "my calibration text")
                match Demo.prepareOut d [ "--calib-text", calib ] with
                | Error(InvalidOption("--out", why)) -> Expect.stringContains why "--calib-text" "names the input's option"
                | other -> failtestf "expected a refusal, got %A" other
                Expect.equal (File.ReadAllText calib) "my calibration text" "the input is untouched"
                Expect.equal (Demo.prepareOut (d + "-other") [ "--calib-text", calib ]) (Ok()) "a folder beside it is fine"
                Directory.Delete(Path.GetDirectoryName d, true) }
            test "an empty existing folder is taken" {
                let d = tempDir ()
                Expect.equal (Demo.prepareOut d []) (Ok()) "empty folder"
                Directory.Delete(d, true) } ]

        test "texts: split by name at the year, calibration is the last training documents, no document in two parts" {
            let src = tempDir ()
            for name, text in [ "1990_a.txt", "address of 1990"; "1995_b.txt", "address of 1995"; "1999_c.txt", "address of 1999"; "2001_d.txt", "address of 2001" ] do
                File.WriteAllText(Path.Combine(src, name), text)
            let out = tempDir ()
            let t = Demo.writeTexts (TextFolder src) "2000" 2 out |> Result.defaultWith (fun e -> failtestf "%A" e)
            Expect.equal (t.TrainDocuments, t.CalibDocuments, t.EvalDocuments) (3, 2, 1) "counts"
            let docs (p: string) = TaylorCalibrate.Pipeline.Text.Corpus.readDocuments p |> Result.defaultWith (fun e -> failtestf "%A" e)
            Expect.equal (docs t.Train) [ "address of 1990"; "address of 1995"; "address of 1999" ] "train: before 2000 in order"
            Expect.equal (docs t.Calib) [ "address of 1995"; "address of 1999" ] "calibration: the last two of them"
            Expect.equal (docs t.Eval) [ "address of 2001" ] "held out: 2000 on"
            Directory.Delete(src, true)
            Directory.Delete(out, true) }

        testList "token ratio" [
            test "interpolated: taylor reaches the naive final PPL between checkpoints" {
                // naive ends at 40 after 1000 tokens; taylor goes 80 -> 30 over 0..500: 40 at 0 + (80-40)/(80-30)·500 = 400.
                match Demo.tokenRatio (sample ()).Naive (sample ()).Taylor with
                | Demo.Measured(n, t) ->
                    Expect.equal n 1000L "naive's tokens"
                    Expect.floatClose Accuracy.veryHigh t 400.0 "taylor's tokens" 
                | other -> failtestf "expected a measured ratio, got %A" other }
            test "a bound when taylor starts at or below the target" {
                let naive = curve [ 0L, 400.0; 1000L, 90.0 ]
                Expect.equal (Demo.tokenRatio naive (curve [ 0L, 80.0; 1000L, 20.0 ])) (Demo.AtLeast(1000L, 0L)) "bound" }
            test "not reached" {
                let naive = curve [ 0L, 400.0; 1000L, 10.0 ]
                Expect.equal (Demo.tokenRatio naive (curve [ 0L, 80.0; 1000L, 20.0 ])) Demo.NotReachedByTaylor "never at 10" } ]

        test "summary.json holds the zero-shot figures, both curves and the ratio" {
            use doc = JsonDocument.Parse(Demo.toJson (sample ()))
            let r = doc.RootElement
            Expect.equal (r.GetProperty("zero_shot_perplexity").GetProperty("naive").GetDouble()) 400.0 "naive"
            Expect.equal (r.GetProperty("naive_over_taylor_calibrate").GetDouble()) 5.0 "400/80"
            Expect.equal (r.GetProperty("gap_to_teacher_naive_over_taylor_calibrate").GetDouble()) (390.0 / 70.0) "(400-10)/(80-10)"
            Expect.equal (r.GetProperty("stage2_curves").GetProperty("taylor_calibrate").GetProperty("points").GetArrayLength()) 3 "points"
            Expect.floatClose Accuracy.veryHigh (r.GetProperty("token_ratio").GetProperty("ratio").GetDouble()) 2.5 "1000/400" }

        test "the report states the figures and writes each picture with its JSON" {
            let d = tempDir ()
            Demo.writeReport d (sample ())
            let html = File.ReadAllText(Path.Combine(d, "report.html"))
            Expect.stringContains html "2.5x fewer" "the ratio in words"
            Expect.stringContains html "5.00x lower than naive" "zero-shot gain"
            Expect.stringContains html "1000 tokens in rows of 100" "the Stage-2 recipe"
            for f in [ "summary.json"; "zero-shot-ppl.svg"; "zero-shot-ppl.json"; "stage2-curves.svg"; "stage2-curves.json" ] do
                Expect.isTrue (File.Exists(Path.Combine(d, f))) f
            Directory.Delete(d, true) } ]
