/// `taylor-calibrate distill` through the real executable on the tiny fixture (Distill/TinyDistill.fs, no
/// ../shared): a short run writes the student, checkpoints and curve; each bad input gets one line on stderr
/// naming what is wrong, exit code 2, and no student written.
module TaylorCalibrate.Tests.Cli.DistillCliTests

open System.IO
open System.Text.Json.Nodes
open Expecto
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

let private baseArgs (f: TinyDistill.Fixture) (out: string) =
    [ "distill"; "--stage"; "1"; "--student"; f.StudentDir; "--teacher"; f.TeacherDir; "--train-text"; f.TrainText
      "--tokens"; "128"; "--seq-len"; "16"; "--batch"; "2"; "--checkpoint-every"; "64"; "--eval-text"; f.EvalText
      "--out"; out; "--device"; "cpu" ]

let private expectRefused (args: string list) (fragments: string list) (out: string) =
    let r = CliRunner.run args
    Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
    Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line on stderr: {r.Err}"
    for f in fragments do Expect.stringContains r.Err f "the message names what is wrong"
    Expect.isFalse (File.Exists(Path.Combine(out, StudentIo.weightsFile))) "no student written to --out"

let private withFixture (body: TinyDistill.Fixture -> unit) =
    let f = TinyDistill.create ()
    try body f finally TinyDistill.delete f

[<Tests>]
let tests =
    testList "Cli.distill" [
        test "a short Stage-1 run writes the student, checkpoints, curve.json and curve.svg" {
            withFixture (fun f ->
                let out = Path.Combine(f.Root, "out")
                let r = CliRunner.run (baseArgs f out)
                Expect.equal r.ExitCode 0 $"exit code 0 (stderr: {r.Err})"
                for file in [ StudentIo.weightsFile; "config.json"; "curve.json"; "curve.svg"; "distill.json"; "checkpoints/latest" ] do
                    Expect.isTrue (File.Exists(Path.Combine(out, file))) $"{file} written"
                Expect.stringContains r.Out "tokens/s" "reports the throughput"
                Expect.isTrue (StudentIo.isStudentDirectory out) "--out is a student directory")
        }

        test "without rate options, both stages train with the method's recipe, as their checkpoints record it" {
            // docs/method.md §7: Stage 1 lr 1e-3 cosine to 0; Stage 2 1e-4 ("attn") / 7e-6 (rest), constant;
            // both AdamW β 0.9/0.95, weight decay 0.01, clip 1.0.
            withFixture (fun f ->
                let settingsOf (out: string) =
                    let ck = Path.Combine(out, "checkpoints")
                    let latest = File.ReadAllText(Path.Combine(ck, "latest")).Trim()
                    let manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(ck, latest, "manifest.json")))
                    let settings = (manifest["body"]["settings"]).AsObject()
                    fun (key: string) ->
                        match settings[key] with
                        | null -> failtestf "%s has no setting %s; it has %s" latest key (settings |> Seq.map (fun kv -> kv.Key) |> String.concat ", ")
                        | v -> string v
                let run stage =
                    let out = Path.Combine(f.Root, $"recipe-{stage}")
                    let args = baseArgs f out |> List.map (fun a -> if a = "1" then stage else a)
                    let r = CliRunner.run args
                    Expect.equal r.ExitCode 0 $"stage {stage} exit code 0 (stderr: {r.Err})"
                    settingsOf out
                let s1 = run "1"
                Expect.equal (s1 "group.gdn.lr") "0.001" "Stage 1 rate"
                Expect.stringStarts (s1 "adamw.schedule") "cosine:" "Stage 1 cosine schedule"
                let s2 = run "2"
                Expect.equal (s2 "group.attn.lr") "0.0001" "Stage 2 attention rate"
                Expect.equal (s2 "group.rest.lr") "7E-06" "Stage 2 rate of the rest"
                Expect.equal (s2 "adamw.schedule") "constant" "Stage 2 constant schedule"
                for s in [ s1; s2 ] do
                    Expect.equal (s "adamw.beta1") "0.9" "β1"
                    Expect.equal (s "adamw.beta2") "0.95" "β2"
                    Expect.equal (s "adamw.clip") "1" "clip"
                Expect.equal (s1 "group.gdn.weight_decay") "0.01" "Stage 1 weight decay"
                Expect.equal (s2 "group.rest.weight_decay") "0.01" "Stage 2 weight decay")
        }

        test "without --eval-text the run finishes and curve.svg draws the training loss" {
            withFixture (fun f ->
                let out = Path.Combine(f.Root, "no-eval")
                let args = baseArgs f out |> List.filter (fun a -> a <> "--eval-text" && a <> f.EvalText)
                let r = CliRunner.run args
                Expect.equal r.ExitCode 0 $"exit code 0 (stderr: {r.Err})"
                let svg = File.ReadAllText(Path.Combine(out, "curve.svg"))
                Expect.stringContains svg "training loss" "the picture is of the training loss"
                Expect.isTrue (File.Exists(Path.Combine(out, StudentIo.weightsFile))) "the student is written")
        }

        test "a student directory whose config and tensors disagree" {
            withFixture (fun f ->
                let cfg = Path.Combine(f.StudentDir, "config.json")
                let o = JsonNode.Parse(File.ReadAllText cfg)
                o["keep_full_attention_layers"] <- JsonArray(JsonValue.Create 0)
                File.WriteAllText(cfg, o.ToJsonString())
                let out = Path.Combine(f.Root, "out")
                expectRefused (baseArgs f out) [ "model.safetensors" ] out)
        }

        test "a training text shorter than one row" {
            withFixture (fun f ->
                let short = Path.Combine(f.Root, "short.txt")
                File.WriteAllText(short, "the cat sat.")
                let out = Path.Combine(f.Root, "out")
                let args = baseArgs f out |> List.map (fun a -> if a = f.TrainText then short else a)
                expectRefused args [ "--train-text"; "short.txt"; "fewer than one row of 17" ] out)
        }

        test "a training text that shares documents with the evaluation text" {
            withFixture (fun f ->
                let out = Path.Combine(f.Root, "out")
                let args = baseArgs f out |> List.map (fun a -> if a = f.EvalText then f.TrainText else a)
                expectRefused args [ "--train-text"; "also occur in the evaluation text" ] out)
        }

        test "a teacher other than the student's" {
            withFixture (fun f ->
                let other = Path.Combine(f.Root, "other-teacher")
                TinyDistill.writeTeacher other (TinyDistill.randomTeacher f.Teacher.Config 99) (File.ReadAllText(Path.Combine(f.TeacherDir, "tokenizer.json")))
                let out = Path.Combine(f.Root, "out")
                let args = baseArgs f out |> List.map (fun a -> if a = f.TeacherDir then other else a)
                expectRefused args [ "--teacher"; "embedding" ] out)
        }

        test "a checkpoint of another run" {
            withFixture (fun f ->
                let out = Path.Combine(f.Root, "out")
                let first = CliRunner.run (baseArgs f out)
                Expect.equal first.ExitCode 0 $"first run (stderr: {first.Err})"
                File.Delete(Path.Combine(out, StudentIo.weightsFile))
                let args = baseArgs f out @ [ "--resume"; "--seed"; "5" ]
                expectRefused args [ "setting 'seed'"; "'0' there but '5' now" ] out)
        }
    ]
