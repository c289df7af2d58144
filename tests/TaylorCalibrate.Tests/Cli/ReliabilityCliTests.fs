/// Bad inputs and faults through the real executable: options that parse but mean nothing (NaN, empty),
/// damaged or forged model files, a second writer into a locked --out, Ctrl-C, a resume over damaged
/// checkpoints, and student directories in every model command. Tests needing ../shared skip without it.
module TaylorCalibrate.Tests.Cli.ReliabilityCliTests

open System
open System.IO
open System.Runtime.InteropServices
open Expecto
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Tests

let private teacher () = Shared.requireShared "models/stories260K/stories260K.bin"
let private calib () = Shared.requireShared "data/tinystories/valid-head.txt"

/// Exit code 2, one line on stderr naming every fragment.
let private expectRefused (r: CliRunner.CliResult) (fragments: string list) =
    Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
    Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line on stderr: {r.Err}"
    Expect.isFalse (r.Err.Contains "internal error") "not an internal error"
    for f in fragments do Expect.stringContains r.Err f "the message names what is wrong"

let private convertArgs (out: string) (extra: string list) =
    [ "convert"; "--teacher"; teacher (); "--calib-text"; calib (); "--out"; out; "--device"; "cpu" ] @ extra

/// A converted stories260K student (kept layer 0, 2 alignment steps), built once for the tests that read one.
let private student =
    lazy (
        let out = Path.Combine(CliRunner.tempDir (), "student")
        let r = CliRunner.run (convertArgs out [ "--keep"; "0"; "--steps"; "2" ])
        if r.ExitCode <> 0 then failwithf "convert failed (%d): %s %s" r.ExitCode r.Out r.Err
        out)

[<Tests>]
let tests =
    testList "Cli.reliability" [
        testList "options that parse but mean nothing" [
            test "--keep-fraction NaN" {
                let out = Path.Combine(CliRunner.tempDir (), "s")
                expectRefused (CliRunner.run (convertArgs out [ "--policy"; "uniform"; "--keep-fraction"; "NaN" ])) [ "--keep-fraction" ]
                Expect.isFalse (Directory.Exists out) "nothing written"
            }
            test "--keep with no index" {
                let out = Path.Combine(CliRunner.tempDir (), "s")
                expectRefused (CliRunner.run (convertArgs out [ "--keep"; "" ])) [ "--keep"; "names no layer" ]
                Expect.isFalse (Directory.Exists out) "nothing written"
            }
            test "--out empty" {
                expectRefused (CliRunner.run (convertArgs "" [ "--keep"; "0" ])) [ "--out"; "expected a path" ]
            }
            for value in [ "NaN"; "Infinity" ] do
                test $"generate --temperature {value}" {
                    expectRefused (CliRunner.run [ "generate"; "--model"; teacher (); "--temperature"; value; "--device"; "cpu" ]) [ "--temperature"; "finite" ]
                }
                test $"bench --min-seconds {value}" {
                    expectRefused (CliRunner.run [ "bench"; "--min-seconds"; value; "--device"; "cpu" ]) [ "--min-seconds"; "finite" ]
                }
        ]
        testList "learning rates that are not finite" [
            for option, stage, value in [ "--lr", "1", "NaN"; "--lr-attn", "2", "Infinity"; "--lr-rest", "2", "-1" ] do
                test $"distill {option} {value}" {
                    let out = Path.Combine(CliRunner.tempDir (), "d")
                    let r = CliRunner.run [ "distill"; "--student"; student.Force(); "--teacher"; teacher (); "--train-text"; calib (); "--stage"; stage
                                            option; value; "--tokens"; "4096"; "--out"; out; "--device"; "cpu" ]
                    expectRefused r [ option; value ]
                    Expect.isFalse (Directory.Exists out) "nothing written"
                }
        ]
        testList "damaged and forged model files" [
            test "a NaN teacher weight is refused naming its tensor" {
                let bytes = File.ReadAllBytes(teacher ())
                let h = MemoryMarshal.Cast<byte, int>(ReadOnlySpan(bytes, 0, 28)).ToArray()
                let dim, layers, vocab = h[0], h[2], abs h[5]
                // llama2.c order: header, embedding (V·D), attention norms (L·D), then q_proj of layer 0.
                let offset = 28 + 4 * (vocab * dim + layers * dim) + 4 * 5
                BitConverter.GetBytes(Single.NaN).CopyTo(bytes, offset)
                let dir = CliRunner.tempDir ()
                let bad = Path.Combine(dir, "nan.bin")
                File.WriteAllBytes(bad, bytes)
                File.Copy(Path.Combine(Path.GetDirectoryName(teacher ()), "tok512.bin"), Path.Combine(dir, "tok512.bin"))
                let out = Path.Combine(dir, "s")
                let r = CliRunner.run [ "convert"; "--teacher"; bad; "--calib-text"; calib (); "--out"; out; "--device"; "cpu"; "--keep"; "0" ]
                expectRefused r [ "model.layers.0.self_attn.q_proj.weight"; "NaN"; "index 5" ]
                Expect.isFalse (Directory.Exists out) "no student written"
            }
            test "a llama2.c header larger than its file is refused" {
                let dir = CliRunner.tempDir ()
                let path = Path.Combine(dir, "forged.bin")
                let header = [| 1 <<< 30; 1; 1; 1; 1; 512; 256 |] // dim 2^30 in a 1 MB file
                let bytes = Array.zeroCreate<byte> (1 <<< 20)
                MemoryMarshal.AsBytes(ReadOnlySpan header).CopyTo(Span bytes)
                File.WriteAllBytes(path, bytes)
                expectRefused (CliRunner.run [ "inspect"; path ]) [ "forged.bin"; "bytes" ]
            }
            test "invalid UTF-8 text is warned about once, with its byte offset" {
                let dir = CliRunner.tempDir ()
                let text = Path.Combine(dir, "bad.txt")
                let good = Text.Encoding.UTF8.GetBytes "Once upon a time " // 17 bytes
                File.WriteAllBytes(text, Array.concat [ good; [| 0xffuy; 0xfeuy |]; good; [| 0xffuy |]; good ])
                let r = CliRunner.run [ "eval"; "--model"; teacher (); "--text"; text; "--device"; "cpu"; "--window"; "8" ]
                Expect.stringContains r.Err "bad.txt: invalid UTF-8 at byte offset 17" "names the file and offset"
                Expect.equal (r.Err.Split("invalid UTF-8").Length - 1) 1 "warned once"
                // The training text of distill is warned about too (the run then stops at --tokens, before any step).
                let d = CliRunner.run [ "distill"; "--student"; student.Force(); "--teacher"; teacher (); "--train-text"; text; "--stage"; "2"
                                        "--seq-len"; "8"; "--tokens"; "1"; "--out"; Path.Combine(dir, "d"); "--device"; "cpu" ]
                Expect.stringContains d.Err "bad.txt: invalid UTF-8 at byte offset 17" $"distill warns (stderr: {d.Err})"
            }
        ]
        testList "convert output directory" [
            test "a second writer into a locked --out fails fast naming the holder" {
                let out = Path.Combine(CliRunner.tempDir (), "s")
                use held = DirectoryLock.acquire out "test holder" |> Result.defaultWith failwith
                let r = CliRunner.run (convertArgs out [ "--keep"; "0"; "--steps"; "2" ])
                expectRefused r [ "--out"; "locked by"; $"process {Environment.ProcessId}"; "test holder" ]
                Expect.isFalse (File.Exists(Path.Combine(out, "model.safetensors"))) "nothing written"
            }
            test "Ctrl-C reports interrupted, exit 130, and the command that resumes" {
                let out = Path.Combine(CliRunner.tempDir (), "s")
                let runFile = Path.Combine(out, "align", "run.json")
                let r = CliRunner.runInterrupted (convertArgs out [ "--keep"; "0"; "--steps"; "100000" ]) (fun () -> File.Exists runFile) 300.0
                Expect.equal r.ExitCode 130 $"exit 130 (stdout: {r.Out}; stderr: {r.Err})"
                Expect.stringContains r.Err "interrupted" "says interrupted"
                Expect.isFalse (r.Err.Contains "internal error") "not an internal error"
                Expect.stringContains r.Err "--resume" "prints the command that continues"
                Expect.stringContains r.Err out "the command names the output"
            }
            test "resume names the restored layers and redoes one whose checkpoint fails its checksum" {
                let dir = CliRunner.tempDir ()
                let out = Path.Combine(dir, "s")
                let first = CliRunner.run (convertArgs out [ "--keep"; "0"; "--steps"; "2" ])
                Expect.equal first.ExitCode 0 $"first run: {first.Err}"
                Expect.stringContains first.Err "warning: no --eval-text" "the skipped overlap check is said"
                let reportText = File.ReadAllText(Path.Combine(out, "report.json"))
                let report = Text.Json.Nodes.JsonNode.Parse reportText
                let overlapChecked = report.["calibration"].["overlap_checked"].GetValue<bool>()
                Expect.isFalse overlapChecked "and recorded"
                let layer1 = report.["layers"].[0]
                let flat, perToken = layer1.["final_cosine_flattened"].GetValue<float>(), layer1.["final_cosine_mean_per_token"].GetValue<float>()
                Expect.isTrue (flat > -1.0 && flat <= 1.0 && perToken > -1.0 && perToken <= 1.0) $"both cosines reported: {flat}, {perToken}"
                Expect.notEqual flat perToken "two different figures"
                let layer2 = Path.Combine(out, "align", "layer-2.safetensors")
                let bytes = File.ReadAllBytes layer2
                bytes[bytes.Length - 3] <- bytes[bytes.Length - 3] ^^^ 0x40uy // flip a bit of the last tensor
                File.WriteAllBytes(layer2, bytes)
                let r = CliRunner.run (convertArgs out [ "--keep"; "0"; "--steps"; "2"; "--resume" ])
                Expect.equal r.ExitCode 0 $"resumed run: {r.Err}"
                Expect.stringContains r.Out "layers 1, 3, 4 restored" "names the restored layers"
                Expect.stringContains r.Err "layer-2.safetensors" "names the damaged checkpoint"
                Expect.stringContains r.Err "checksum" "says why it is redone"
                let again = CliRunner.run (convertArgs out [ "--keep"; "0"; "--steps"; "2"; "--resume" ])
                Expect.stringContains again.Out "layers 1, 2, 3, 4 restored" "the redone layer was saved again, verified"
            }
        ]
        testList "student directories" [
            test "inspect, generate and logits accept a student" {
                let s = student.Force()
                let inspect = CliRunner.run [ "inspect"; s ]
                Expect.equal inspect.ExitCode 0 $"inspect: {inspect.Err}"
                Expect.stringContains inspect.Out "student" "described as a student"
                let gen = CliRunner.run [ "generate"; "--model"; s; "--prompt"; "Once"; "--steps"; "3"; "--device"; "cpu" ]
                Expect.equal gen.ExitCode 0 $"generate: {gen.Err}"
                let logitsFile = Path.Combine(CliRunner.tempDir (), "logits.safetensors")
                let logits = CliRunner.run [ "logits"; "--model"; s; "--ids"; "1,2,3"; "--out"; logitsFile; "--device"; "cpu" ]
                Expect.equal logits.ExitCode 0 $"logits: {logits.Err}"
                Expect.isTrue (File.Exists logitsFile) "logits written"
            }
            for field, value in [ "expand_v", "2"; "use_short_conv", "true"; "use_gate", "false" ] do
                test $"a student config with {field} = {value} is refused by name" {
                    let src = student.Force()
                    let s = Path.Combine(CliRunner.tempDir (), "edited")
                    Directory.CreateDirectory s |> ignore
                    for f in Directory.GetFiles src do File.Copy(f, Path.Combine(s, Path.GetFileName f))
                    let cfg = Path.Combine(s, "config.json")
                    let cfgText = File.ReadAllText cfg
                    let o = (Text.Json.Nodes.JsonNode.Parse cfgText).AsObject()
                    o[field] <- Text.Json.Nodes.JsonNode.Parse value
                    File.WriteAllText(cfg, o.ToJsonString())
                    expectRefused (CliRunner.run [ "inspect"; s ]) [ field; "config.json" ]
                }
        ]
    ]
