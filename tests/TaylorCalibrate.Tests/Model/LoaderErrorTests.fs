/// Bad model inputs give one-line errors that name the file, field, tensor or shard: unsupported
/// model_type, missing config field, tensor missing or of the wrong shape, a missing shard, a truncated
/// llama2.c checkpoint, text shorter than one window.
module TaylorCalibrate.Tests.Model.LoaderErrorTests

open System
open System.IO
open System.Text.Json.Nodes
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "tc-loader-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d

let private config =
    { Family = ModelFamily.Qwen2; Dim = 8; Hidden = 12; Layers = 2; Heads = 2; KvHeads = 1; HeadDim = 4; Vocab = 10
      Context = 32; NormEps = 1e-6; RopeTheta = 1e6; RopeScaling = None; RopeLayout = RopeLayout.HalfSplit
      TiedEmbeddings = true; QkvBias = true; OutputBias = false; QkNorm = false }

/// A valid tiny checkpoint: every tensor filled with 0.5 (values do not matter here).
let private teacher () =
    let fill n = Array.create n 0.5f
    let weights =
        HfLayout.assemble config (fun _ shape -> Ok(fill (Array.fold (*) 1 shape)))
        |> Result.defaultWith (fun e -> failtest (InputError.describe e))
    { Config = config; Weights = weights; Source = { Path = "memory"; Format = "test"; DTypes = [] } }

let private expectError (r: Result<'a, InputError>) (fragments: string list) =
    match r with
    | Ok _ -> failtestf "accepted bad input (expected an error mentioning %A)" fragments
    | Error e ->
        let msg = InputError.describe e
        Expect.isFalse (msg.Contains '\n') "one line"
        for f in fragments do Expect.stringContains msg f "message names the problem"

let private editConfig (dir: string) (edit: JsonObject -> unit) =
    let p = Path.Combine(dir, "config.json")
    let o = JsonNode.Parse(File.ReadAllText p).AsObject()
    edit o
    File.WriteAllText(p, o.ToJsonString())

[<Tests>]
let tests =
    testList "Teacher loading errors" [
        test "unsupported model_type lists the supported ones" {
            let dir = tempDir ()
            HfWriter.write dir (teacher ()) HfWriter.F32 None
            editConfig dir (fun o -> o["model_type"] <- JsonValue.Create "gpt2")
            expectError (ModelFiles.loadTeacher dir) [ "config.json"; "unsupported model_type 'gpt2' (supported: llama, qwen2, qwen3)" ] }

        test "a missing required config field is named" {
            let dir = tempDir ()
            HfWriter.write dir (teacher ()) HfWriter.F32 None
            editConfig dir (fun o -> o.Remove "num_hidden_layers" |> ignore)
            expectError (ModelFiles.loadTeacher dir) [ "config.json"; "'num_hidden_layers' is missing" ] }

        test "an unsupported rope_scaling type is named" {
            let dir = tempDir ()
            HfWriter.write dir (teacher ()) HfWriter.F32 None
            editConfig dir (fun o -> o["rope_scaling"] <- JsonNode.Parse """{"rope_type": "yarn", "factor": 4.0}""")
            expectError (ModelFiles.loadTeacher dir) [ "rope_scaling"; "yarn" ] }

        test "features the forward does not implement are refused by name" {
            for field, value, fragment in [ "hidden_act", JsonValue.Create "gelu" :> JsonNode, "supported: silu"
                                            "mlp_bias", JsonValue.Create true, "not supported"
                                            "use_sliding_window", JsonValue.Create true, "sliding-window" ] do
                let dir = tempDir ()
                HfWriter.write dir (teacher ()) HfWriter.F32 None
                editConfig dir (fun o -> o[field] <- value)
                expectError (ModelFiles.loadTeacher dir) [ "config.json"; field; fragment ] }

        test "a tensor of the wrong shape names both shapes" {
            let dir = tempDir ()
            HfWriter.write dir (teacher ()) HfWriter.F32 None
            editConfig dir (fun o -> o["intermediate_size"] <- JsonValue.Create 16)
            expectError (ModelFiles.loadTeacher dir) [ "model.layers.0.mlp.gate_proj.weight"; "[12,8]"; "[16,8]" ] }

        test "a missing tensor is named (untied lm_head absent)" {
            let dir = tempDir ()
            HfWriter.write dir (teacher ()) HfWriter.F32 None
            editConfig dir (fun o -> o["tie_word_embeddings"] <- JsonValue.Create false)
            expectError (ModelFiles.loadTeacher dir) [ "lm_head.weight"; "missing" ] }

        test "a shard named in the index but absent is named" {
            let dir = tempDir ()
            HfWriter.write dir (teacher ()) HfWriter.BF16 (Some 200L)
            let shards = Directory.GetFiles(dir, "model-*.safetensors") |> Array.sort
            File.Delete shards[shards.Length - 1]
            expectError (ModelFiles.loadTeacher dir) [ "model.safetensors.index.json"; Path.GetFileName shards[shards.Length - 1]; "missing" ] }

        test "a truncated llama2.c checkpoint is rejected with both sizes" {
            let dir = tempDir ()
            let p = Path.Combine(dir, "m.bin")
            let header = [| 8; 12; 1; 2; 1; 10; 16 |]
            File.WriteAllBytes(p, Array.append (header |> Array.collect BitConverter.GetBytes) (Array.zeroCreate 40))
            expectError (ModelFiles.loadTeacher p) [ "m.bin"; "68 bytes"; "truncated" ] }

        test "a model path that does not exist is named" {
            expectError (ModelFiles.loadTeacher "/nonexistent/model") [ "/nonexistent/model"; "not found" ] }

        test "text shorter than one window, and bad windows" {
            expectError (Perplexity.prepare "t.txt" config [| 1; 2; 3 |] (Some 4) None) [ "t.txt"; "3 tokens"; "window of 4" ]
            expectError (Perplexity.prepare "t.txt" config [| 1; 2; 3 |] (Some 64) None) [ "--window"; "context length 32" ]
            expectError (Perplexity.prepare "t.txt" config [| 1; 2; 3 |] (Some 1) None) [ "--window" ] }
    ]
