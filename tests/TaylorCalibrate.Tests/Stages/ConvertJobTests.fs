/// ConvertJob, the conversion a script drives without the CLI, on a tiny random 3-layer teacher written here
/// (no ../shared): naive and zero-gate need no calibration text and run no trace (the same student either
/// way), the other strategies demand one; a resume with other settings names the setting; and a run that fails
/// after taking its output directory removes what it created, keeps what a resume continues from, and never
/// touches what was there before.
module TaylorCalibrate.Tests.Stages.ConvertJobTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Model

/// A 3-layer Llama teacher (context 256 for the 4×256 calibration batch) with the tiny byte-level tokenizer,
/// and a calibration text of ~1,600 tokens (the CLI conversion tests use it too).
let setup () =
    let dir = CliRunner.tempDir ()
    let modelDir = Path.Combine(dir, "teacher")
    let c = { TeacherForwardTests.TinyModels.config ModelFamily.Llama with Layers = 3; Vocab = 264; Context = 256 }
    HfWriter.write modelDir (TeacherForwardTests.TinyModels.teacher c 71) HfWriter.F32 None
    let _, tokPath = TokenizerTests.tinyTokenizerWith ignore
    File.Copy(tokPath, Path.Combine(modelDir, "tokenizer.json"))
    let calib = Path.Combine(dir, "calib.txt")
    let story i = $"Once upon a time a little cat number {i} saw the tall tree and the low wall, then went home.\n<|endoftext|>\n"
    File.WriteAllText(calib, String.concat "" [ for i in 1 .. 20 -> story i ])
    dir, modelDir, calib

let private request teacher strategy calib steps =
    { ConvertJob.Request.defaults teacher (ConvertJob.Layers [ 0 ]) strategy calib with Steps = Some steps }

let private prepared r = match ConvertJob.prepare r with Ok p -> p | Error e -> failtest (InputError.describe e)
let private taken p out resume = match ConvertJob.takeOutput p out resume with Ok o -> o | Error e -> failtest (InputError.describe e)

/// Runs a prepared conversion into `out`, raising `Failure "injected"` at the first event `failAt` accepts.
let private runFailingAt (p: ConvertJob.Prepared) (out: string) (resume: bool) (failAt: ConvertJob.Event -> bool) =
    use o = taken p out resume
    let be = Backends.cpu.Get()
    try
        ConvertJob.run be p o (fun e -> if failAt e then failwith "injected") CancellationToken.None |> ignore
        failtest "the injected failure did not happen"
    with Failure "injected" -> ()

[<Tests>]
let tests =
    testList "Stages.ConvertJob" [
        testList "strategies without calibration" [
            for strategy in [ Convert.InitStrategy.Naive; Convert.InitStrategy.ZeroGate ] do
                let name = Convert.InitStrategy.name strategy
                test $"{name} converts without a calibration text, traces nothing, and builds the same student as with one" {
                    let dir, teacher, calib = setup ()
                    let be = Backends.cpu.Get()
                    let events = Collections.Generic.List<ConvertJob.Event>()
                    let without = prepared (request teacher strategy None 2)
                    Expect.isNone without.Calibration "no calibration batch"
                    Expect.isEmpty without.Warnings "no overlap warning: there is no calibration text to check"
                    let a =
                        use o = taken without (Path.Combine(dir, "a")) false
                        ConvertJob.run be without o events.Add CancellationToken.None
                    Expect.isFalse (events.Contains ConvertJob.Tracing) "no teacher trace"
                    Expect.isNone a.Report.Calibration "the report records no calibration"
                    Expect.isEmpty a.Report.Layers "and measures no layer"
                    let b =
                        let p = prepared (request teacher strategy (Some calib) 2)
                        use o = taken p (Path.Combine(dir, "b")) false
                        ConvertJob.run be p o ignore CancellationToken.None
                    Expect.equal b.Report.Layers.Length 2 "given a calibration text, both converted layers' fit is measured"
                    for KeyValue(i, w) in b.Student.Gdn do
                        Expect.isTrue (StudentIo.tensors a.Student = StudentIo.tensors b.Student) $"layer {i}: bit-identical students"
                    Expect.equal (a.Student.Gdn[1].Wg |> Array.forall ((=) 0f)) (strategy = Convert.InitStrategy.ZeroGate) "W_g = 0 exactly for zero-gate"
                    let saved = StudentIo.load (Path.Combine(dir, "a")) |> Result.defaultWith (InputError.describe >> failtest)
                    Expect.isTrue (StudentIo.tensors saved = StudentIo.tensors a.Student) "the saved student is the returned one"
                    Directory.Delete(dir, true)
                }
            for strategy in [ Convert.InitStrategy.TaylorInit; Convert.InitStrategy.AlignmentOnly; Convert.InitStrategy.TaylorCalibrate; Convert.InitStrategy.CalibratePlus ] do
                test $"{Convert.InitStrategy.name strategy} demands a calibration text" {
                    let dir, teacher, _ = setup ()
                    match ConvertJob.prepare (request teacher strategy None 2) with
                    | Error(InvalidOption("--calib-text", why)) -> Expect.stringContains why (Convert.InitStrategy.name strategy) "names the strategy"
                    | other -> failtest $"expected a --calib-text error, got {other}"
                    Directory.Delete(dir, true)
                }
            test "a calibration text that is not clean UTF-8 and a missing overlap check are warned about" {
                let dir, teacher, calib = setup ()
                let bytes = File.ReadAllBytes calib
                bytes[40] <- 0xffuy
                File.WriteAllBytes(calib, bytes)
                let p = prepared (request teacher Convert.InitStrategy.TaylorCalibrate (Some calib) 2)
                Expect.exists p.Warnings (fun w -> w.Contains "calib.txt: invalid UTF-8 at byte offset 40") $"names file and offset: {p.Warnings}"
                Expect.exists p.Warnings (fun w -> w.Contains "no --eval-text") "says the overlap was not checked"
                Directory.Delete(dir, true)
            }
            test "calibration options without a calibration text are refused by name" {
                let dir, teacher, _ = setup ()
                let r = request teacher Convert.InitStrategy.Naive None 2
                for option, r in [ "--eval-text", { r with EvalText = Some "eval.txt" }; "--calib-tokens", { r with CalibTokens = Some 1024 } ] do
                    match ConvertJob.prepare r with
                    | Error(InvalidOption(o, _)) -> Expect.equal o option "names the option"
                    | other -> failtest $"{option}: expected an error, got {other}"
                Directory.Delete(dir, true)
            }
        ]
        test "convert does prepare, takeOutput and run in one call, and returns input errors as values" {
            let dir, teacher, calib = setup ()
            let out = Path.Combine(dir, "s")
            let r = { request teacher Convert.InitStrategy.TaylorInit (Some calib) 2 with Seed = 3 }
            match ConvertJob.convert (Backends.cpu.Get()) r out false CancellationToken.None with
            | Ok o ->
                Expect.equal o.Directory out "into --out"
                Expect.equal o.Report.Layers.Length 2 "both converted layers reported"
                Expect.isSome o.Report.Layers[0].Convert.Phase1 "taylor-init ran Phase 1"
                for f in [ StudentIo.weightsFile; "config.json"; "report.json"; "report.html" ] do
                    Expect.isTrue (File.Exists(Path.Combine(out, f))) $"{f} written"
            | Error e -> failtest (InputError.describe e)
            match ConvertJob.convert (Backends.cpu.Get()) r out false CancellationToken.None with
            | Error(InvalidOption("--out", why)) -> Expect.stringContains why "not empty" "a second run into the same --out is refused"
            | other -> failtest $"expected --out refused, got {other}"
            Directory.Delete(dir, true)
        }
        testList "resume settings" [
            test "a resume with other settings is refused in one line naming the setting and both values" {
                let dir, teacher, calib = setup ()
                let out = Path.Combine(dir, "s")
                let p2 = prepared (request teacher Convert.InitStrategy.TaylorCalibrate (Some calib) 2)
                do
                    use o = taken p2 out false
                    ConvertJob.run (Backends.cpu.Get()) p2 o ignore CancellationToken.None |> ignore
                let p3 = prepared (request teacher Convert.InitStrategy.TaylorCalibrate (Some calib) 3)
                match ConvertJob.takeOutput p3 out true with
                | Error(CheckpointMismatch(path, field, saved, current) as e) ->
                    Expect.equal (field, saved, current) ("steps", "2", "3") "the differing setting"
                    Expect.equal path (AlignCheckpoint.runFile out) "names the settings file"
                    Expect.isFalse ((InputError.describe e).Contains '\n') "one line"
                | other -> failtest $"expected a settings mismatch, got {other}"
                // Edited calibration text: same path, other content.
                File.AppendAllText(calib, "One more story about a dog.\n<|endoftext|>\n")
                File.WriteAllText(calib, File.ReadAllText(calib).Replace("little cat", "small dog"))
                let edited = prepared (request teacher Convert.InitStrategy.TaylorCalibrate (Some calib) 2)
                match ConvertJob.takeOutput edited out true with
                | Error(CheckpointMismatch(_, field, _, _)) -> Expect.equal field "calib_tokens_sha256" "the calibration content differs"
                | other -> failtest $"expected a content mismatch, got {other}"
                Directory.Delete(dir, true)
            }
            test "settingsDifference names a setting only one side has" {
                Expect.equal (ConvertJob.settingsDifference "a=1\nb=2\n" [ "a", "1"; "b", "2" ]) None "same"
                Expect.equal (ConvertJob.settingsDifference "a=1\n" [ "a", "1"; "b", "2" ]) (Some("b", "(not recorded)", "2")) "new setting"
                Expect.equal (ConvertJob.settingsDifference "a=1\nc=3\n" [ "a", "1" ]) (Some("c", "3", "(not a setting)")) "old setting"
            }
        ]
        testList "a failed run cleans up what it created" [
            test "a directory the run created is removed" {
                let dir, teacher, calib = setup ()
                let out = Path.Combine(dir, "s")
                let p = prepared (request teacher Convert.InitStrategy.TaylorCalibrate (Some calib) 2)
                runFailingAt p out false ((=) ConvertJob.Traced)
                Expect.isFalse (Directory.Exists out) "no empty --out left behind"
                Directory.Delete(dir, true)
            }
            test "an empty directory that was there stays, emptied of what the run wrote" {
                let dir, teacher, calib = setup ()
                let out = Path.Combine(dir, "s")
                Directory.CreateDirectory out |> ignore
                let p = prepared (request teacher Convert.InitStrategy.TaylorCalibrate (Some calib) 2)
                runFailingAt p out false ((=) ConvertJob.Traced)
                Expect.isTrue (Directory.Exists out) "the user's directory stays"
                Expect.isEmpty (Directory.GetFileSystemEntries out) "and holds nothing of this run (align/run.json removed)"
                Directory.Delete(dir, true)
            }
            test "aligned layers are kept for --resume, and a failed resume removes only what it created" {
                let dir, teacher, calib = setup ()
                let out = Path.Combine(dir, "s")
                let p = prepared (request teacher Convert.InitStrategy.TaylorCalibrate (Some calib) 2)
                // Fails as layer 2 starts: layer 1 is aligned and persisted.
                runFailingAt p out false ((=) (ConvertJob.LayerStarted 2))
                let layer1 = Path.Combine(out, "align", "layer-1.safetensors")
                Expect.isTrue (File.Exists layer1) "layer 1 kept"
                Expect.isTrue (File.Exists(AlignCheckpoint.runFile out)) "with the settings a resume checks"
                let before = File.ReadAllBytes layer1
                File.WriteAllText(Path.Combine(out, "notes.txt"), "the user's own file")
                do
                    use o = taken p out true
                    Expect.equal (o.Restored |> Map.toList |> List.map fst) [ 1 ] "a resume restores layer 1"
                // A resume that fails before aligning anything removes nothing that was there before it.
                runFailingAt p out true ((=) ConvertJob.Traced)
                Expect.equal (File.ReadAllBytes layer1) before "layer 1's checkpoint untouched"
                Expect.isTrue (File.Exists(Path.Combine(out, "notes.txt"))) "the user's file untouched"
                Expect.isTrue (File.Exists(AlignCheckpoint.runFile out)) "the settings untouched"
                Directory.Delete(dir, true)
            }
            test "a second taker fails naming the holder and removes nothing" {
                let dir, teacher, calib = setup ()
                let out = Path.Combine(dir, "s")
                let p = prepared (request teacher Convert.InitStrategy.Naive (Some calib) 2)
                use first = taken p out false
                match ConvertJob.takeOutput p out false with
                | Error(InvalidOption("--out", why)) -> Expect.stringContains why "locked by" "names the holder"
                | other -> failtest $"expected a lock error, got {other}"
                Expect.isTrue (Directory.Exists out) "the holder's directory stays"
                (first :> IDisposable).Dispose()
                Expect.isFalse (Directory.Exists out) "released unused: the directory the first taker created is removed"
                Directory.Delete(dir, true)
            }
        ]
    ]
