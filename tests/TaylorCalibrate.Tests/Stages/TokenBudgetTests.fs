/// The token-budget experiment: where a curve reaches a target and the BL/TC ratio (constructed curves), and
/// the whole experiment on the tiny distillation fixture: it runs end to end, its JSON agrees with its own
/// curves, a rerun reuses every finished part, another setting in the same folder is refused naming it,
/// and bad input leaves the CLI with exit code 2.
module TaylorCalibrate.Tests.Stages.TokenBudgetTests

open System
open System.IO
open System.Text.Json
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Distill.LearningCurve
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Stages.TokenBudgetResult
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

let private curve (pts: (int64 * float) list) =
    pts |> List.mapi (fun i (t, p) -> { Step = i; Tokens = t; Perplexity = p; Loss = nan; HeldOutKl = nan })

[<Tests>]
let reachTests =
    testList "TokenBudget.reach and ratio" [
        let c = curve [ 0L, 40.0; 100L, 20.0; 200L, 10.0; 300L, 8.0 ]
        test "a target at or above the zero-shot PPL is reached at 0 tokens" {
            Expect.equal (reach 40.0 c) ZeroShot "zero-shot PPL equals the target"
        }
        test "a target inside the first segment is only bounded by the first checkpoint" {
            Expect.equal (reach 30.0 c) (AtMost 100L) "between 0 and the first checkpoint"
        }
        test "a target between two checkpoints is interpolated linearly" {
            // 15 lies halfway between 20 (100 tokens) and 10 (200 tokens).
            Expect.equal (reach 15.0 c) (At 150.0) "halfway"
            // 9 lies halfway between 10 (200) and 8 (300).
            Expect.equal (reach 9.0 c) (At 250.0) "halfway again"
        }
        test "a target below the last point is not reached within the budget" {
            Expect.equal (reach 7.0 c) (Missed 300L) "the budget bounds it"
        }
        test "ratios: exact, bounds, unbounded" {
            Expect.equal (ratio (At 300.0) (At 100.0)) (Exact 3.0) "both interpolated"
            Expect.equal (ratio (At 300.0) (AtMost 100L)) (AtLeast 3.0) "TC bounded above: ratio bounded below"
            Expect.equal (ratio (AtMost 100L) (At 50.0)) (AtMostRatio 2.0) "BL bounded above: ratio bounded above"
            Expect.equal (ratio (Missed 400L) (At 100.0)) (AtLeast 4.0) "BL beyond its budget"
            Expect.equal (ratio (At 300.0) ZeroShot) Unbounded "TC there before any token"
            Expect.equal (ratio ZeroShot ZeroShot) Undetermined "both there zero-shot"
        }
        test "the mean and spread use the exact ratios only" {
            let row = { Name = "x"; Factor = None; Perplexity = [ 1.0; 1.0; 1.0 ]
                        PerSeed = [ ZeroShot, ZeroShot, Exact 2.0; ZeroShot, ZeroShot, Exact 4.0; ZeroShot, ZeroShot, AtLeast 9.0 ] }
            let m, sd, n = (exactMean row).Value
            Expect.equal n 2 "two exact seeds"
            Expect.floatClose Accuracy.veryHigh m 3.0 "mean of 2 and 4"
            Expect.floatClose Accuracy.veryHigh sd (sqrt 2.0) "sample sd of 2 and 4"
        }
    ]

/// The experiment's settings on the fixture: rows of 32 x 2 (64 tokens a step), 896 tokens split 1:6
/// (Stage 1: 2 steps, Stage 2: 12 steps), evaluations every 128 tokens on 512 held-out tokens.
let private settings (f: TinyDistill.Fixture) (out: string) =
    { TokenBudget.Settings.defaults f.TeacherDir LayerSelection.Policy.Uniform 0.34 896L 128L f.TrainText f.TrainText f.EvalText with
        SeqLen = 32; Batch = 2; AlignSteps = 5; EvalMaxTokens = Some 512; SelectionTokens = 256
        Stage2LrAttention = 1e-3f; Stage2LrRest = 1e-4f }

let private run (s: TokenBudget.Settings) (out: string) =
    let be = Backends.cpu.Get()
    let events = Collections.Generic.List<TokenBudget.Event>()
    let r = TokenBudget.run be s out events.Add CancellationToken.None
    r, List.ofSeq events

let private ok (r: Result<'a, InputError>) =
    match r with Ok v -> v | Error e -> failtestf "expected success: %s" (InputError.describe e)

/// The tokens at which `points` reach `target`, interpolated independently of TokenBudgetResult.
let private crossing (target: float) (points: (float * float) list) =
    points |> List.pairwise |> List.tryPick (fun ((t0, p0), (t1, p1)) ->
        if p0 > target && p1 <= target then Some(t0 + (p0 - target) / (p0 - p1) * (t1 - t0)) else None)

[<Tests>]
let experimentTests =
    testSequenced <| testList "TokenBudget experiment" [
        test "runs end to end, its JSON agrees with its own curves, and a rerun reuses everything" {
            let f = TinyDistill.create ()
            try
                let out = Path.Combine(f.Root, "budget")
                let s = settings f out
                let outcome, events = run s out
                let outcome = ok outcome
                TokenBudgetResult.write out outcome
                Expect.equal outcome.Kept [ 0 ] "uniform keeps round(0.34 x 3) = 1 layer: layer 0"
                Expect.equal outcome.Runs.Length 2 "naive and taylor-calibrate, one seed"
                for r in outcome.Runs do
                    let tokens = r.Points |> List.map (fun p -> p.Tokens)
                    // 0; Stage 1 at 128; Stage 2 every 128 from there to 128 + 768.
                    Expect.equal tokens [ 0L; 128L; 256L; 384L; 512L; 640L; 768L; 896L ] $"{r.Init}: points at 0, after Stage 1 and every checkpoint"
                    Expect.equal r.Stage1Tokens 128L "Stage 1 is 1/7 of 896 tokens"
                    Expect.isTrue (r.Points |> List.forall (fun p -> Double.IsFinite p.Perplexity)) "finite PPL everywhere"
                Expect.isTrue (events |> List.exists (function TokenBudget.Note m -> m.StartsWith "converting" | _ -> false)) "the first run converts"
                // The JSON, checked against the curves it holds.
                use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "token-budget.json")))
                let root = doc.RootElement
                let curveOf init =
                    root.GetProperty("curves").EnumerateArray()
                    |> Seq.find (fun c -> c.GetProperty("init").GetString() = init)
                    |> fun c -> [ for p in c.GetProperty("points").EnumerateArray() -> p.GetProperty("tokens").GetDouble(), p.GetProperty("perplexity").GetDouble() ]
                let bl, tc = curveOf "naive", curveOf "taylor-calibrate"
                let teacher = root.GetProperty("teacher_perplexity").GetDouble()
                let targets = [ for t in root.GetProperty("targets").EnumerateArray() -> t ]
                Expect.equal targets.Length 5 "four teacher multiples and the baseline's final PPL"
                let finalTarget = targets[4].GetProperty("per_seed").[0].GetProperty("target_perplexity").GetDouble()
                Expect.floatClose Accuracy.veryHigh finalTarget (snd (List.last bl)) "the last target is the baseline's final PPL"
                let mutable exact = 0
                for t in targets do
                    let e = t.GetProperty("per_seed").[0]
                    let target = e.GetProperty("target_perplexity").GetDouble()
                    match t.GetProperty("factor").ValueKind with
                    | JsonValueKind.Number -> Expect.floatClose Accuracy.high target (t.GetProperty("factor").GetDouble() * teacher) "a multiple of the teacher"
                    | _ -> ()
                    let check (side: string) (c: (float * float) list) =
                        let r = e.GetProperty side
                        match r.GetProperty("kind").GetString() with
                        | "zero_shot" -> Expect.isLessThanOrEqual (snd c.Head) target $"{side}: zero-shot at the target"; 0.0
                        | "at_most" ->
                            Expect.isGreaterThan (snd c.Head) target $"{side}: above the target zero-shot"
                            Expect.isLessThanOrEqual (snd c[1]) target $"{side}: at the target by the first checkpoint"
                            Expect.equal (r.GetProperty("tokens").GetDouble()) (fst c[1]) "the bound is the first checkpoint"
                            nan
                        | "interpolated" ->
                            let expected = (crossing target c).Value
                            Expect.floatClose Accuracy.high (r.GetProperty("tokens").GetDouble()) expected $"{side}: interpolated from its own curve"
                            expected
                        | "not_reached" -> Expect.isTrue (c |> List.forall (fun (_, p) -> p > target)) $"{side}: never at the target"; nan
                        | k -> failtestf "unknown kind %s" k
                    let b, t' = check "baseline" bl, check "taylor_calibrate" tc
                    let ratio = e.GetProperty("ratio_bl_over_tc")
                    if ratio.GetProperty("kind").GetString() = "exact" then
                        exact <- exact + 1
                        Expect.floatClose Accuracy.high (ratio.GetProperty("value").GetDouble()) (b / t') "ratio = tokens_BL / tokens_TC"
                        Expect.floatClose Accuracy.high (t.GetProperty("ratio_mean").GetDouble()) (b / t') "one seed: the mean is that ratio"
                for name in [ "token-budget.md"; "learning-curves.svg"; "learning-curves.json"; "report.html"; "settings.json"; "selection.json" ] do
                    Expect.isTrue (File.Exists(Path.Combine(out, name))) $"{name} written"
                let html = File.ReadAllText(Path.Combine(out, "report.html"))
                Expect.isFalse (html.Contains "http://" || html.Contains "https://") "the report names no URL"
                Expect.stringContains html "<path class=\"series\"" "the chart has drawn lines"
                // A rerun with the same settings reuses every student and run.
                let again, events2 = run s out
                let again = ok again
                Expect.isFalse (events2 |> List.exists (function TokenBudget.Note m -> m.StartsWith "converting" | TokenBudget.Distilling _ -> true))
                    "nothing converted or distilled again"
                // Tokens and PPL compared (the zero-shot point's loss is NaN, which equals nothing).
                let pts (o: TokenBudget.Outcome) = o.Runs |> List.map (fun r -> r.Points |> List.map (fun p -> p.Tokens, p.Perplexity))
                Expect.equal (pts again) (pts outcome) "the same curves"
                // Another setting in the same folder is refused, naming it.
                match run { s with Tokens = 1792L } out |> fst with
                | Error(InvalidOption(o, why)) ->
                    Expect.equal o "--tokens" "names the option"
                    Expect.stringContains why "896" "says what the folder holds"
                | other -> failtestf "expected the --tokens mismatch, got %A" (other |> Result.map (fun _ -> ()))
            finally TinyDistill.delete f
        }
        test "a training text that shares a document with the held-out text is refused before any work" {
            let f = TinyDistill.create ()
            try
                let out = Path.Combine(f.Root, "budget")
                match run { settings f out with TrainText = f.EvalText } out |> fst with
                | Error(InvalidOption(o, _)) -> Expect.equal o "--train-text" "names the training text"
                | other -> failtestf "expected a --train-text error, got %A" (other |> Result.map (fun _ -> ()))
                Expect.isFalse (Directory.Exists out) "nothing written"
            finally TinyDistill.delete f
        }
        test "bad input leaves the CLI with exit code 2 and one line" {
            let f = TinyDistill.create ()
            try
                let args (extra: string list) =
                    [ "experiment"; "token-budget"; "--teacher"; f.TeacherDir; "--tokens"; "896"; "--checkpoint-every"; "128"
                      "--calib-text"; f.TrainText; "--train-text"; f.TrainText; "--eval-text"; f.EvalText; "--out"; Path.Combine(f.Root, "o")
                      "--seq-len"; "32"; "--batch"; "2" ] @ extra
                for extra, expected in [ [ "--policy"; "sideways" ], "--policy"
                                         [ "--policy"; "uniform"; "--stage-split"; "1-6" ], "--stage-split"
                                         [ "--policy"; "uniform"; "--keep-fraction"; "1.5" ], "--keep-fraction" ] do
                    let r = CliRunner.run (args extra)
                    Expect.equal r.ExitCode 2 $"{extra}: exit code 2 ({r.Err})"
                    Expect.stringContains r.Err expected $"{extra}: names the option"
                    Expect.equal (r.Err.Trim().Split('\n').Length) 1 "one line"
            finally TinyDistill.delete f
        }
    ]
