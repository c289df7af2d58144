/// `inspect`, `eval`, `generate` and `logits` end-to-end through the real executable: outputs agree with
/// the library, the JSON report has its fields, and bad input gives one line on stderr with exit code 2.
module TaylorCalibrate.Tests.Model.TeacherCliTests

open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Tests

let private stories () = Shared.requireShared "models/stories260K/stories260K.bin"

/// A tiny random Qwen2 checkpoint (BF16) without a tokenizer.
let private tinyModel () =
    let c =
        { Family = ModelFamily.Qwen2; Dim = 16; Hidden = 24; Layers = 2; Heads = 4; KvHeads = 2; HeadDim = 4; Vocab = 40
          Context = 32; NormEps = 1e-6; RopeTheta = 1e6; RopeScaling = None; RopeLayout = RopeLayout.HalfSplit
          TiedEmbeddings = true; QkvBias = true; OutputBias = false; QkNorm = false }
    let mutable seed = 0
    let w =
        HfLayout.assemble c (fun _ shape ->
            seed <- seed + 1
            Ok(Rand.normal seed 0.3 (Array.fold (*) 1 shape)))
        |> Result.defaultWith (fun e -> failtest (InputError.describe e))
    let t = { Config = c; Weights = w; Source = { Path = "memory"; Format = "test"; DTypes = [] } }
    let dir = CliRunner.tempDir ()
    HfWriter.write dir t HfWriter.BF16 None
    dir

let private expectUsageError (r: CliRunner.CliResult) (fragments: string list) =
    Expect.equal r.ExitCode 2 $"exit code 2 (stdout: {r.Out}, stderr: {r.Err})"
    Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line on stderr: {r.Err}"
    for f in fragments do Expect.stringContains r.Err f "the message names what is wrong"

[<Tests>]
let tests =
    testList "Cli.teacher" [
        test "logits --ids on a tokenizer-less HF model equals the library forward" {
            let dir = tinyModel ()
            let out = Path.Combine(dir, "logits.safetensors")
            let r = CliRunner.run [ "logits"; "--model"; dir; "--ids"; "1,5,39,0"; "--out"; out; "--device"; "cpu" ]
            Expect.equal r.ExitCode 0 $"exit 0 (stderr: {r.Err})"
            let h = Safetensors.readHeader out |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            Expect.equal (h.Entries |> List.map (fun e -> e.Name, e.Shape)) [ "logits", [| 4; 40 |]; "ids", [| 4 |] ] "tensors"
            Expect.equal (Safetensors.readI32 h "ids" |> Result.defaultValue [||]) [| 1; 5; 39; 0 |] "ids"
            let t = ModelFiles.loadTeacher dir |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            use m = new DeviceDecoder(Backends.cpu.Get(), t)
            let expected = Decoder.logits m [| 1; 5; 39; 0 |] 1 4
            Expect.equal (Safetensors.readF32 h "logits" |> Result.defaultValue [||]) expected "same logits as the library" }

        test "logits: bad ids and a missing tokenizer are usage errors" {
            let dir = tinyModel ()
            let out = Path.Combine(dir, "x.safetensors")
            expectUsageError (CliRunner.run [ "logits"; "--model"; dir; "--ids"; "1,40"; "--out"; out; "--device"; "cpu" ]) [ "40"; "[0, 40)" ]
            expectUsageError (CliRunner.run [ "logits"; "--model"; dir; "--text"; "hi"; "--out"; out; "--device"; "cpu" ]) [ "tokenizer.json" ]
            Expect.isFalse (File.Exists out) "no output file" }

        test "inspect: an unsupported model_type is one line, exit 2" {
            let dir = tinyModel ()
            let p = Path.Combine(dir, "config.json")
            let o = JsonNode.Parse(File.ReadAllText p)
            o["model_type"] <- JsonValue.Create "mistral"
            File.WriteAllText(p, o.ToJsonString())
            expectUsageError (CliRunner.run [ "inspect"; dir ]) [ "unsupported model_type 'mistral' (supported: llama, qwen2, qwen3)" ] }

        test "inspect stories260K lists family, heads, parameters and tokenizer" {
            let r = CliRunner.run [ "inspect"; stories () ]
            Expect.equal r.ExitCode 0 r.Err
            for f in [ "llama2.c"; "8 / 4"; "260,032"; "tok512.bin"; "adjacent pairs" ] do Expect.stringContains r.Out f "inspect output" }

        test "generate stories260K greedily from BOS tells the golden story" {
            let r = CliRunner.run [ "generate"; "--model"; stories (); "--steps"; "20"; "--device"; "cpu" ]
            Expect.equal r.ExitCode 0 r.Err
            Expect.stringStarts r.Out "Once upon a time, there was a little girl named Lily." "greedy text" }

        test "eval stories260K writes the JSON report; too-short text is a usage error" {
            let text = Shared.requireShared "data/tinystories/valid-head.txt"
            let dir = CliRunner.tempDir ()
            let json = Path.Combine(dir, "eval.json")
            let r = CliRunner.run [ "eval"; "--model"; stories (); "--text"; text; "--window"; "256"; "--max-tokens"; "4096"; "--device"; "cpu"; "--json"; json ]
            Expect.equal r.ExitCode 0 r.Err
            use doc = JsonDocument.Parse(File.ReadAllText json)
            let root = doc.RootElement
            for f in [ "perplexity"; "nll"; "tokens"; "windows"; "window"; "tokens_per_s" ] do
                Expect.isTrue (fst (root.TryGetProperty f)) $"JSON has {f}"
            Expect.equal (root.GetProperty("windows").GetInt32()) 16 "4096 tokens / 256"
            Expect.equal (root.GetProperty("window").GetInt32()) 256 "window"
            let ppl = root.GetProperty("perplexity").GetDouble()
            Expect.isTrue (ppl > 2.5 && ppl < 6.0) $"PPL {ppl} sane"
            let short = Path.Combine(dir, "short.txt")
            File.WriteAllText(short, "Once upon a time.")
            expectUsageError (CliRunner.run [ "eval"; "--model"; stories (); "--text"; short; "--device"; "cpu" ]) [ "short.txt"; "fewer than one window of 512" ] }
    ]
