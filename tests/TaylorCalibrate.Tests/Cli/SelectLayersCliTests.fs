/// `select-layers` and `convert --keep-from` through the real executable: every kind of bad input is one line
/// on stderr naming the option or file, exit code 2, nothing written; a uniform selection on a tiny model
/// written to disk; and (with ../shared) an AR selection on stories260K that `convert --keep-from` follows.
module TaylorCalibrate.Tests.Cli.SelectLayersCliTests

open System.IO
open System.Text.Json.Nodes
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Tests

/// A tiny random Llama checkpoint (F32, no tokenizer) of `layers` layers, written to a fresh folder.
let private tinyModel (layers: int) (seed: int) =
    let c =
        { Family = ModelFamily.Llama; Dim = 16; Hidden = 24; Layers = layers; Heads = 4; KvHeads = 2; HeadDim = 4; Vocab = 40
          Context = 32; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.HalfSplit
          TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }
    let mutable s = seed
    let w =
        HfLayout.assemble c (fun _ shape ->
            s <- s + 1
            Ok(Rand.normal s 0.3 (Array.fold (*) 1 shape)))
        |> Result.defaultWith (fun e -> failtest (InputError.describe e))
    let dir = CliRunner.tempDir ()
    HfWriter.write dir { Config = c; Weights = w; Source = { Path = "memory"; Format = "test"; DTypes = [] } } HfWriter.F32 None
    dir

let private expectRefused (args: string list) (fragments: string list) (outPath: string) =
    let r = CliRunner.run args
    Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}; stderr: {r.Err})"
    Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line on stderr: {r.Err}"
    for f in fragments do Expect.stringContains r.Err f "the message names what is wrong"
    Expect.isFalse (File.Exists outPath || Directory.Exists outPath) "nothing written to --out"

[<Tests>]
let tests =
    testList "Cli.select-layers" [
        // Checked before the teacher is read: the teacher path need not exist.
        let early =
            [ "both --keep and --keep-fraction", [ "--policy"; "uniform"; "--keep"; "1"; "--keep-fraction"; "0.5" ], [ "--keep"; "--keep-fraction"; "not both" ]
              "neither --keep nor --keep-fraction", [ "--policy"; "uniform" ], [ "--keep K"; "--keep-fraction F" ]
              "--keep 0", [ "--policy"; "uniform"; "--keep"; "0" ], [ "--keep 0" ]
              "--keep-fraction NaN", [ "--policy"; "uniform"; "--keep-fraction"; "NaN" ], [ "--keep-fraction NaN"; "(0, 1]" ]
              "--keep-fraction 0", [ "--policy"; "uniform"; "--keep-fraction"; "0" ], [ "--keep-fraction 0"; "(0, 1]" ]
              "--keep-fraction 1.5", [ "--policy"; "uniform"; "--keep-fraction"; "1.5" ], [ "--keep-fraction 1.5" ]
              "unknown policy", [ "--policy"; "random"; "--keep"; "1" ], [ "--policy"; "'random'"; "uniform, ar, ga-s2" ]
              "--init with ar", [ "--policy"; "ar"; "--init"; "naive"; "--keep"; "1"; "--eval-text"; "e.txt" ], [ "--init"; "ga-s2 only" ]
              "ar without --eval-text", [ "--policy"; "ar"; "--keep"; "1" ], [ "--eval-text" ]
              "ga-s2 (taylor-calibrate) without --calib-text", [ "--policy"; "ga-s2"; "--keep"; "1"; "--eval-text"; "e.txt" ], [ "--calib-text"; "taylor-calibrate" ]
              "ga-s2 alignment-only without --calib-text", [ "--policy"; "ga-s2"; "--init"; "alignment-only"; "--keep"; "1"; "--eval-text"; "e.txt" ], [ "--calib-text" ] ]
        for name, args, fragments in early ->
            test name {
                let out = Path.Combine(CliRunner.tempDir (), "sel.json")
                expectRefused ([ "select-layers"; "--teacher"; "no-such-model"; "--out"; out ] @ args) fragments out
            }

        yield test "--keep larger than the teacher's layers" {
            let model = tinyModel 2 1
            let out = Path.Combine(CliRunner.tempDir (), "sel.json")
            expectRefused [ "select-layers"; "--teacher"; model; "--policy"; "uniform"; "--keep"; "3"; "--out"; out ] [ "--keep"; "3"; "1..2" ] out
        }

        yield test "uniform writes the selection; convert --keep-from refuses it for another teacher, naming the difference" {
            let a = tinyModel 2 1
            let dir = CliRunner.tempDir ()
            let sel = Path.Combine(dir, "sel.json")
            let r = CliRunner.run [ "select-layers"; "--teacher"; a; "--policy"; "uniform"; "--keep-fraction"; "0.5"; "--out"; sel ]
            Expect.equal r.ExitCode 0 $"exit 0 (stderr: {r.Err})"
            let s = LayerSelectionFile.read sel |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            Expect.equal s.Kept [ 0 ] "k = round(0.5·2) = 1: layer 0"
            let out = Path.Combine(dir, "student")
            let convert teacher = [ "convert"; "--teacher"; teacher; "--keep-from"; sel; "--calib-text"; "unused.txt"; "--out"; out; "--device"; "cpu" ]
            expectRefused (convert (tinyModel 2 50)) [ "--keep-from"; sel; "different weights" ] out
            expectRefused (convert (tinyModel 3 1)) [ "--keep-from"; sel; "layers 2 vs 3" ] out
            expectRefused (convert a @ [ "--keep"; "1" ]) [ "--keep-from" ] out
            let broken = Path.Combine(dir, "broken.json")
            File.WriteAllText(broken, (JsonNode.Parse(File.ReadAllText sel) :?> JsonObject).ToJsonString().Replace("\"version\":1", "\"version\":9"))
            expectRefused [ "convert"; "--teacher"; a; "--keep-from"; broken; "--calib-text"; "unused.txt"; "--out"; out ] [ broken; "version 9" ] out
        }

        yield test "stories260K: an AR selection is what convert --keep-from keeps" {
            let teacher = Shared.requireShared "models/stories260K/stories260K.bin"
            let text = Shared.requireShared "data/tinystories/valid-head.txt"
            let dir = CliRunner.tempDir ()
            // The AR scores come from the first 8 windows of valid-head; the calibration text is its remainder
            // (disjoint documents), so the two never overlap.
            let docs = File.ReadAllText(text).Split("<|endoftext|>\n")
            let evalText = Path.Combine(dir, "eval.txt")
            let calibText = Path.Combine(dir, "calib.txt")
            File.WriteAllText(evalText, docs[..59] |> Array.map (fun d -> d + "<|endoftext|>\n") |> String.concat "")
            File.WriteAllText(calibText, docs[60..] |> Array.filter (fun d -> d.Trim() <> "") |> Array.map (fun d -> d + "<|endoftext|>\n") |> String.concat "")
            let sel = Path.Combine(dir, "ar.json")
            let r = CliRunner.run [ "select-layers"; "--teacher"; teacher; "--policy"; "ar"; "--keep"; "2"; "--eval-text"; evalText
                                    "--max-tokens"; "4096"; "--device"; "cpu"; "--out"; sel ]
            Expect.equal r.ExitCode 0 $"exit 0 (stderr: {r.Err})"
            let s = LayerSelectionFile.read sel |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            let m = s.Measured.Value
            Expect.equal m.Scores.Length 5 "one score per layer"
            Expect.equal m.Windows 8 "4096 tokens in windows of 512"
            Expect.equal s.Kept.Length 2 "k = 2"
            let out = Path.Combine(dir, "student")
            let c = CliRunner.run [ "convert"; "--teacher"; teacher; "--keep-from"; sel; "--init"; "naive"; "--calib-text"; calibText
                                    "--eval-text"; evalText; "--out"; out; "--device"; "cpu" ]
            Expect.equal c.ExitCode 0 $"convert exit 0 (stderr: {c.Err})"
            let cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(out, "config.json")))
            let kept = cfg["keep_full_attention_layers"].AsArray() |> Seq.map (fun n -> n.GetValue<int>()) |> List.ofSeq
            Expect.equal kept s.Kept "the student keeps the selected layers"
        }
    ]
