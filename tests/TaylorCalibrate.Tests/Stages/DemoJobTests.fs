/// The demo's job as a script runs it (Stages/DemoJob.fs): its checks before anything is written, and a
/// whole run on the built-in teacher with tiny budgets: the steps in order, figures that agree with each
/// other, and the report on disk.
module TaylorCalibrate.Tests.Stages.DemoJobTests

open System
open System.IO
open System.Text.Json
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Stages

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "tc-demojob-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d

let private builtInTeacher = Path.Combine(TaylorCalibrate.Tests.Shared.repoRoot, "models", "demo-teacher")

/// `n` short documents from a seeded generator, separated by <|endoftext|> lines.
let private documents (seed: int) (n: int) =
    let words = [| "the"; "nation"; "congress"; "people"; "we"; "must"; "our"; "budget"; "war"; "peace"; "and"; "will"
                   "year"; "economy"; "states"; "united"; "government"; "jobs"; "have"; "to"; "of"; "in"; "for"; "freedom" |]
    let r = Random seed
    [ for _ in 1 .. n ->
        String.Join(" ", Array.init (3 + r.Next 4) (fun _ -> String.Join(" ", Array.init (5 + r.Next 8) (fun _ -> words[r.Next words.Length])) + ".")) ]
    |> String.concat "\n<|endoftext|>\n"

/// Calibration, training and held-out texts with no document in common (different seeds).
let private texts (dir: string) =
    let write name seed n =
        let p = Path.Combine(dir, name)
        File.WriteAllText(p, documents seed n)
        p
    write "calib.txt" 1 120, write "train.txt" 2 200, write "eval.txt" 3 60

[<Tests>]
let tests =
    testList "DemoJob" [
        test "validate names the option of each out-of-range number" {
            let d = DemoJob.Request.defaults "t" (DemoJob.Given("c", "t", "e")) "out"
            Expect.equal (DemoJob.validate d) (Ok()) "the defaults pass"
            for bad, option in
                [ { d with KeepFraction = 1.0 }, "--keep-fraction"
                  { d with KeepFraction = nan }, "--keep-fraction"
                  { d with AlignSteps = 0 }, "--steps"
                  { d with DistillTokens = 0L }, "--distill-tokens"
                  { d with CheckpointEvery = 0L }, "--checkpoint-every"
                  { d with SeqLen = 1 }, "--seq-len"
                  { d with EvalMaxTokens = 1 }, "--max-eval-tokens"
                  { d with LrRest = -1e-4f }, "--lr-attn/--lr-rest" ] do
                match DemoJob.validate bad with
                | Error(InvalidOption(o, _)) -> Expect.equal o option $"{bad}"
                | other -> failtestf "expected a refusal naming %s, got %A" option other }

        test "a missing text or teacher is refused before the output folder is touched" {
            let dir = tempDir ()
            let calib, train, _ = texts dir
            let out = Path.Combine(dir, "out")
            use be = Devices.Open "cpu"
            let missingEval = DemoJob.Request.defaults builtInTeacher (DemoJob.Given(calib, train, Path.Combine(dir, "nope.txt"))) out
            match DemoJob.run be missingEval ignore CancellationToken.None with
            | Error(InvalidOption("--eval-text", why)) -> Expect.stringContains why "nope.txt" "names the file"
            | other -> failtestf "expected a refusal of --eval-text, got %A" other
            let missingTeacher = { missingEval with Teacher = Path.Combine(dir, "no-teacher"); Texts = DemoJob.Given(calib, train, calib) }
            Expect.isError (DemoJob.run be missingTeacher ignore CancellationToken.None) "no teacher"
            Expect.isFalse (Directory.Exists out) "nothing written"
            Directory.Delete(dir, true) }

        test "a whole run on the built-in teacher: seven steps in order, consistent figures, the report on disk" {
            let dir = tempDir ()
            let calib, train, evalText = texts dir
            let out = Path.Combine(dir, "out")
            use be = Devices.Open "cpu"
            // Tiny budgets: 2 alignment steps, one Stage-2 step of 8 x 256 tokens, 2 held-out windows of 256.
            let request =
                { DemoJob.Request.defaults builtInTeacher (DemoJob.Given(calib, train, evalText)) out with
                    AlignSteps = 2; DistillTokens = 2048L; CheckpointEvery = 2048L; EvalMaxTokens = 512 }
            let events = Collections.Generic.List<DemoJob.Event>()
            let s = DemoJob.run be request events.Add CancellationToken.None |> Result.defaultWith (fun e -> failtestf "%s" (InputError.describe e))
            let steps =
                [ for e in events do
                    match e with
                    | DemoJob.StepStarted(i, _) -> yield $"start {i}"
                    | DemoJob.StepFinished(i, _, _) -> yield $"end {i}"
                    | _ -> () ]
            Expect.equal steps [ for i in 1 .. DemoJob.stepCount do yield $"start {i}"; yield $"end {i}" ] "each step starts and ends, in order"
            Expect.exists events (function DemoJob.Aligning(_, _, 2, _) -> true | _ -> false) "alignment progress of the taylor-calibrate init"
            Expect.exists events (function DemoJob.Distilling("naive", Distill.Distill.Checkpointed _) -> true | _ -> false) "Stage-2 checkpoints"
            Expect.equal (s.KeptLayers, s.TeacherLayers) ([ 0 ], 4) "uniform 25 % of 4 layers keeps layer 0"
            // The same model on the same windows through the same code: equal up to the order of the fp64 sum
            // of per-token log-likelihoods, far below 1e-9 relative.
            let close a b what = Expect.floatClose { absolute = 0.0; relative = 1e-9 } a b what
            close s.Naive.TeacherPerplexity s.TeacherPerplexity "the Stage-2 run's teacher PPL is the teacher step's"
            close s.Naive.Points.Head.Perplexity s.NaivePerplexity "the naive curve starts at the naive zero-shot PPL"
            close s.Taylor.Points.Head.Perplexity s.TaylorPerplexity "the taylor-calibrate curve starts at its zero-shot PPL"
            Expect.notEqual s.NaivePerplexity s.TaylorPerplexity "two different students"
            Expect.equal [ for p in s.Taylor.Points -> p.Tokens ] [ 0L; 2048L ] "checkpoint points"
            for f in [ Demo.markerName; "report.html"; "summary.json"; "zero-shot-ppl.svg"; "zero-shot-ppl.json"; "stage2-curves.svg"; "stage2-curves.json"
                       Path.Combine("naive", "config.json"); Path.Combine("taylor-calibrate", "model.safetensors"); Path.Combine("taylor-calibrate", "report.html")
                       Path.Combine("naive-stage2", "curve.json"); Path.Combine("naive-stage2", "curve.svg") ] do
                Expect.isTrue (File.Exists(Path.Combine(out, f))) f
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "summary.json")))
            Expect.equal (doc.RootElement.GetProperty("zero_shot_perplexity").GetProperty("naive").GetDouble()) s.NaivePerplexity "summary.json holds the run's figure"
            Expect.equal (doc.RootElement.GetProperty("stage2_recipe").GetProperty("tokens").GetInt64()) 2048L "and its recipe"
            Directory.Delete(dir, true) } ]
