/// `experiment study`'s pieces (Stages/Study.fs) on the tiny distillation fixture (no ../shared): one
/// (teacher, policy) pair runs the token budget and the zero-shot ablation, its table row is made of its own
/// measurements, a rerun reuses the pair, the summary is written offline, and teachers that are absent are
/// named as skipped rather than silently dropped.
module TaylorCalibrate.Tests.Stages.StudyTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

/// The fixture as a study teacher: 448 tokens per student (rows of 32 x 2), evaluations every 128 tokens on
/// 512 held-out tokens, 5 alignment steps, calibrate-plus on 256 + 128 tokens.
let private setting (f: TinyDistill.Fixture) : Study.TeacherSetting =
    { Name = "tiny"; Path = f.TeacherDir; CalibText = f.TrainText; TrainText = f.TrainText; EvalText = f.EvalText
      Tokens = 448L; CheckpointEvery = 128L; SeqLen = 32; AlignSteps = 5; EvalMaxTokens = 512
      Plus = { ZeroShotAblation.AblationOptions.defaults with AlignSteps = 5; PlusFitTokens = 256; PlusDevTokens = 128; PlusSteps = 5 } }

let private recipe = { Study.Recipe.full with KeepFraction = 0.34; Batch = 2 }

let private ok (r: Result<'a, InputError>) =
    match r with Ok v -> v | Error e -> failtestf "expected success: %s" (InputError.describe e)

[<Tests>]
let tests =
    testSequenced <| testList "Study" [
        test "a pair: every init's zero-shot PPL, the budget's own zero-shot points, its table row, a reusing rerun, an offline summary" {
            let f = TinyDistill.create ()
            try
                let out = Path.Combine(f.Root, "study")
                let be = Backends.cpu.Get()
                let t = setting f
                let pair = Study.runPair be recipe out t LayerSelection.Policy.Uniform ignore CancellationToken.None |> ok
                let names = pair.ZeroShot |> List.map fst
                Expect.equal names (Convert.InitStrategy.all |> List.map Convert.InitStrategy.name) "every init, in the ablation's order"
                Expect.isTrue (pair.ZeroShot |> List.forall (snd >> Double.IsFinite)) "finite zero-shot PPL for every init"
                // The naive and taylor-calibrate figures are the token budget's own first points, not a second measurement.
                let firstPoint init =
                    (pair.Outcome.Runs |> List.find (fun r -> Convert.InitStrategy.name r.Init = init)).Points.Head.Perplexity
                for init in [ "naive"; "taylor-calibrate" ] do
                    Expect.equal (pair.ZeroShot |> List.find (fun (n, _) -> n = init) |> snd) (firstPoint init) $"{init}: the budget's point at 0 tokens"
                let md = Study.markdown "t" "r" [ pair ] []
                let naive, tc = firstPoint "naive", firstPoint "taylor-calibrate"
                let row = md.Split('\n') |> Array.find (fun l -> l.StartsWith "| tiny | uniform | [0] of 3 |")
                Expect.stringContains row (sprintf "%.2fx" (naive / tc)) "the row's naive/TC ratio is its own figures' ratio"
                Expect.stringContains row (naive.ToString("F3", Globalization.CultureInfo.InvariantCulture)) "the row shows the naive PPL"
                let again = Study.runPair be recipe out t LayerSelection.Policy.Uniform ignore CancellationToken.None |> ok
                Expect.equal again.ZeroShot pair.ZeroShot "a rerun reuses the pair's measurements"
                Study.writeSummary out "t" "r" [ pair ] [] 1.0
                let html = File.ReadAllText(Path.Combine(out, "report.html"))
                for bad in [ "https:"; "src=\"http"; "href=\"http"; "//cdn" ] do
                    Expect.isFalse (html.Contains bad) $"report.html references '{bad}'"
                for file in [ "study.md"; "study.json" ] do
                    Expect.isTrue (File.Exists(Path.Combine(out, file))) $"{file} written"
            finally TinyDistill.delete f
        }

        test "teachers that are absent are named as skipped, with the command that provides them" {
            let dir = Path.Combine(Path.GetTempPath(), "tc-study-" + Guid.NewGuid().ToString "N")
            try
                let settings, notes = Study.teachers None (Path.Combine(dir, "cache")) (Path.Combine(dir, "texts")) None false |> ok
                Expect.isEmpty settings "no teacher to run"
                Expect.exists notes (fun n -> n.StartsWith "stories260K skipped") "stories260K named"
                for n in [ "sotu-llama"; "sotu-qwen2"; "sotu-qwen3" ] do
                    Expect.exists notes (fun m -> m.StartsWith $"{n} skipped" && m.Contains "build.fsx teachers") $"{n} named with the command"
            finally try Directory.Delete(dir, true) with _ -> ()
        }
    ]
