/// The zero-shot ablation sweep (Stages/ZeroShotAblation.fs) and `experiment ablation` on the tiny conversion
/// teacher (no ../shared): a budget counts every calibration token a strategy reads, calibrate-plus's held-out
/// part included; each row holds its own conversions, one per seed; impossible budgets are refused before any
/// conversion; the reports carry every seed.
module TaylorCalibrate.Tests.Stages.ZeroShotAblationTests

open System
open System.IO
open System.Text.Json.Nodes
open System.Threading
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text
open TaylorCalibrate.Tests

let private ok (r: Result<'a, InputError>) =
    match r with Ok v -> v | Error e -> failtestf "expected success: %s" (InputError.describe e)

/// The conversion fixture's teacher and calibration text, and an evaluation text of other stories.
let private setup () =
    let dir, teacherDir, calib = ConvertJobTests.setup ()
    let eval = Path.Combine(dir, "eval.txt")
    let story i = $"One day a small dog called {i} ran to the big park and found a red ball under a bench.\n<|endoftext|>\n"
    File.WriteAllText(eval, String.concat "" [ for i in 500 .. 512 -> story i ])
    dir, teacherDir, calib, eval

/// Loaded inputs of a sweep on the fixture, keeping layer 0 of 3.
let private inputs (teacherDir: string) (calib: string) (eval: string) =
    let teacher = ModelFiles.loadTeacher teacherDir |> ok
    let tok = ModelFiles.tokenizerFor teacherDir teacher.Config None |> ok
    let calibDocs = Corpus.readDocuments calib |> ok
    let evalDocs = Corpus.readDocuments eval |> ok
    let set = Perplexity.prepare eval teacher.Config (Corpus.tokenStream tok evalDocs) None None |> ok
    teacher, tok, calibDocs, evalDocs, set

let private settings budgets seeds : ZeroShotAblation.Settings =
    { Budgets = budgets; Seeds = seeds; AlignSteps = Some 3; PlusSteps = Some 3; Expand = GqaExpand.Heads
      ChunkLength = 256; AllowOverlap = false }

/// The PPL of one conversion done by hand from a calibration split, independently of the sweep.
let private convertByHand (teacher: Teacher) (split: Calibration.CalibrationSplit) strategy seed (set: Perplexity.EvalSet) =
    let be = Backends.cpu.Get()
    use dt = new DeviceDecoder(be, teacher)
    let converted = [ 1; 2 ]
    let fit = TeacherTrace.runStreamed dt split.Fit converted TeacherTrace.windowChunks
    let dev = split.Dev |> Option.map (fun d -> TeacherTrace.runStreamed dt d converted TeacherTrace.windowChunks)
    let o = Convert.ConvertOptions.defaults strategy
    let o = { o with Seed = seed; Align = { o.Align with Steps = 3 }; Plus = { o.Plus with Steps = 3 } }
    let student, _ = Convert.runWith be teacher fit dev [ 0 ] o Convert.Hooks.none CancellationToken.None
    use m = new DeviceDecoder(be, student)
    (Perplexity.evaluateModel (Perplexity.decoderModel m) None set None CancellationToken.None).Perplexity

[<Tests>]
let tests =
    testList "ZeroShotAblation" [
        test "a budget counts calibrate-plus's held-out part: fit chunks are what remains of it" {
            Expect.equal (Calibration.fitChunks 256 20480 4096 |> ok) 64 "20,480 tokens with 4,096 held out fit on 64 chunks of 256"
            Expect.equal (Calibration.fitChunks 256 1024 0 |> ok) 4 "the published strategies fit on all of it"
            Expect.equal (Calibration.fitChunks 256 1024 100 |> ok) 3 "a partial held-out chunk takes a whole chunk"
            match Calibration.fitChunks 256 1024 1024 with
            | Error(InvalidOption(option, why)) ->
                Expect.stringContains option "--calib-dev-tokens" "names the option"
                Expect.stringContains why "1024" "names the budget"
            | other -> failtestf "expected a refusal, got %A" other
            // calibrate-plus's default held-out part: a quarter of the budget, at least one chunk, at most 4,096.
            let plus = ConvertJob.defaultDevTokens Convert.InitStrategy.CalibratePlus
            Expect.equal [ plus 512; plus 1024; plus 4096; plus 20480; plus 65536 ] [ 256; 256; 1024; 4096; 4096 ] "default dev tokens"
            Expect.equal (ConvertJob.defaultDevTokens Convert.InitStrategy.AlignmentOnly 20480) 0 "the published strategies hold nothing out"
            Expect.equal (ConvertJob.defaultCalibTokens Convert.InitStrategy.CalibratePlus) 20480 "calibrate-plus reads 16,384 fit + 4,096 dev tokens"
        }

        test "each row is its own conversions, one per seed, on the split its budget implies" {
            let dir, teacherDir, calib, eval = setup ()
            try
                let teacher, tok, calibDocs, evalDocs, set = inputs teacherDir calib eval
                let budgets =
                    [ ZeroShotAblation.Budget.at Convert.InitStrategy.AlignmentOnly 1024
                      ZeroShotAblation.Budget.at Convert.InitStrategy.CalibratePlus 1024 ]
                let events = Collections.Generic.List<ZeroShotAblation.Event>()
                let teacherPpl, rows =
                    ZeroShotAblation.sweep (Backends.cpu.Get()) teacher tok calib calibDocs (eval, evalDocs) set [ 0 ] (settings budgets [ 0; 1 ])
                        events.Add CancellationToken.None |> ok
                Expect.isTrue (Double.IsFinite teacherPpl) "teacher PPL"
                Expect.equal (rows |> List.map (fun r -> r.Budget)) budgets "one row per budget, in order"
                Expect.equal (events |> Seq.filter (function ZeroShotAblation.Converted _ -> true | _ -> false) |> Seq.length) 4 "2 budgets x 2 seeds"
                // alignment-only reads all 1,024 tokens: 4 chunks, nothing held out.
                let aoSplit = Calibration.buildSplit { Calibration.CalibrationOptions.defaults with Batch = 4 } 0 tok calib calibDocs (Some(eval, evalDocs)) |> ok
                Expect.equal rows[0].Perplexity.[1] (convertByHand teacher aoSplit Convert.InitStrategy.AlignmentOnly 1 set) "alignment-only, seed 1: the same PPL by hand (deterministic CPU)"
                // calibrate-plus reads the same 1,024 tokens: 3 fit chunks and one held-out chunk of trailing documents.
                let cpSplit = Calibration.buildSplit { Calibration.CalibrationOptions.defaults with Batch = 3 } 256 tok calib calibDocs (Some(eval, evalDocs)) |> ok
                Expect.equal (cpSplit.Fit.Tokens.Length + cpSplit.Dev.Value.Tokens.Length) 1024 "fit + dev = the budget"
                Expect.equal rows[1].Perplexity.[0] (convertByHand teacher cpSplit Convert.InitStrategy.CalibratePlus 0 set) "calibrate-plus, seed 0: the same PPL by hand"
                Expect.notEqual rows[0].Perplexity.[0] rows[0].Perplexity.[1] "the seeds are different conversions"
            finally try Directory.Delete(dir, true) with _ -> ()
        }

        test "a budget that holds everything out is refused before any conversion" {
            let dir, teacherDir, calib, eval = setup ()
            try
                let teacher, tok, calibDocs, evalDocs, set = inputs teacherDir calib eval
                let budgets =
                    [ ZeroShotAblation.Budget.at Convert.InitStrategy.AlignmentOnly 1024
                      { Strategy = Convert.InitStrategy.CalibratePlus; CalibTokens = 512; DevTokens = 512 } ]
                let mutable reported = 0
                let r = ZeroShotAblation.sweep (Backends.cpu.Get()) teacher tok calib calibDocs (eval, evalDocs) set [ 0 ] (settings budgets [ 0 ])
                            (fun _ -> reported <- reported + 1) CancellationToken.None
                match r with
                | Error(InvalidOption(option, _)) -> Expect.stringContains option "--calib-dev-tokens 512" "names the option and value"
                | other -> failtestf "expected a refusal, got %A" other
                Expect.equal reported 0 "nothing ran"
            finally try Directory.Delete(dir, true) with _ -> ()
        }

        test "the reports carry every seed, the fit/dev split and the mean of the seeds" {
            let budget = ZeroShotAblation.Budget.at Convert.InitStrategy.CalibratePlus 1024
            let rows : ZeroShotAblation.Row list = [ { Budget = budget; Perplexity = [ 10.0; 12.0; 14.0 ]; Seconds = [ 1.0; 2.0; 3.0 ] } ]
            let x : ZeroShotAblation.Context =
                { TeacherPath = "t"; Layers = 3; Kept = [ 0 ]; CalibText = "c.txt"; EvalText = "e.txt"; EvalWindows = 2; EvalWindow = 256
                  Settings = settings [ budget ] [ 0; 1; 2 ] }
            let md = ZeroShotAblation.markdown x 5.0 rows
            let row = md.Split('\n') |> Array.find (fun l -> l.StartsWith "| calibrate-plus")
            Expect.stringContains row "1024 (768 + 256)" "budget with its fit and dev parts"
            Expect.stringContains row "12.000 ± 2.000" "mean ± sample sd"
            Expect.stringContains row "10.000, 12.000, 14.000" "every seed"
            let o = JsonNode.Parse(ZeroShotAblation.json x 5.0 rows 9.0)
            let r = o["results"].AsArray()[0]
            Expect.equal (r["calib_dev_tokens"].GetValue<int>()) 256 "dev tokens"
            Expect.equal [ for v in r["per_seed"].AsArray() -> v.GetValue<float>() ] [ 10.0; 12.0; 14.0 ] "per seed"
            Expect.equal (r["mean_ppl"].GetValue<float>()) 12.0 "mean"
        }

        test "experiment ablation: strategies at equal budgets, and a held-out part that leaves nothing refused in one line" {
            let dir, teacherDir, calib, eval = setup ()
            try
                let common = [ "experiment"; "ablation"; "--teacher"; teacherDir; "--keep"; "0"; "--calib-text"; calib; "--eval-text"; eval; "--device"; "cpu" ]
                let bad = Path.Combine(dir, "bad")
                let r = CliRunner.run (common @ [ "--strategies"; "calibrate-plus"; "--calib-tokens"; "1024"; "--calib-dev-tokens"; "1024"; "--out"; bad ])
                Expect.equal r.ExitCode 2 $"exit code 2 ({r.Err})"
                Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line: {r.Err}"
                Expect.stringContains r.Err "--calib-dev-tokens 1024" "names the option"
                Expect.isFalse (Directory.Exists bad) "nothing written"
                let out = Path.Combine(dir, "ablation")
                let r = CliRunner.run (common @ [ "--strategies"; "alignment-only,calibrate-plus"; "--calib-tokens"; "512,1024"; "--steps"; "2"; "--out"; out ])
                Expect.equal r.ExitCode 0 $"runs ({r.Err})"
                let o = JsonNode.Parse(File.ReadAllText(Path.Combine(out, "ablation.json")))
                let rows = [ for e in o["results"].AsArray() -> e["strategy"].GetValue<string>(), e["calib_tokens"].GetValue<int>(), e["calib_dev_tokens"].GetValue<int>() ]
                Expect.equal rows [ "alignment-only", 512, 0; "alignment-only", 1024, 0; "calibrate-plus", 512, 256; "calibrate-plus", 1024, 256 ] "each strategy at each budget"
                for f in [ "ablation.md"; "ablation.html" ] do Expect.isTrue (File.Exists(Path.Combine(out, f))) $"{f} written"
            finally try Directory.Delete(dir, true) with _ -> ()
        }
    ]
