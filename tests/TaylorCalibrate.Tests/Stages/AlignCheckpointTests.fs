/// Per-layer alignment checkpoints: a saved layer comes back bit for bit; flipped bytes fail the checksum and
/// are redone; an unreadable file is redone when it may be the layer being written at a crash, and is an
/// error naming the file when a later layer was restored.
module TaylorCalibrate.Tests.Stages.AlignCheckpointTests

open System.IO
open Expecto
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Tests

let private weights (seed: int) : GdnWeights =
    let r = System.Random seed
    let a n = Array.init n (fun _ -> float32 (r.NextDouble() - 0.5))
    { Wq = a 12; Wk = a 12; Wv = a 12; Wg = a 12; Wa = a 4; Wb = a 4; ALog = a 2; DtBias = a 2; ONorm = a 3; Wo = a 12 }

let private result (i: int) : Align.AlignResult =
    { Layer = i; Losses = [| 1.0; 0.5; 0.25 |]; BestLoss = 0.25; BestStep = 2; GradNorms = [| 3.0; 2.0 |]; Seconds = 1.5 }

let private dirWith (layers: int list) =
    let d = CliRunner.tempDir ()
    for i in layers do AlignCheckpoint.save d i (weights i) (result i)
    d

let private layerPath d i = Path.Combine(d, "align", $"layer-{i}.safetensors")

let private flipLastByte (path: string) =
    let b = File.ReadAllBytes path
    b[b.Length - 1] <- b[b.Length - 1] ^^^ 0x01uy
    File.WriteAllBytes(path, b)

[<Tests>]
let tests =
    testList "Stages.AlignCheckpoint" [
        test "a saved layer loads back bit for bit" {
            let d = dirWith [ 1 ]
            match AlignCheckpoint.load d 1 with
            | AlignCheckpoint.Restored(w, r) ->
                Expect.equal w (weights 1) "weights"
                Expect.equal r (result 1) "alignment result"
            | other -> failtestf "expected Restored, got %A" other
            Expect.equal (AlignCheckpoint.load d 2) AlignCheckpoint.NotSaved "a layer never saved"
        }
        test "one flipped bit fails the checksum, and resume redoes that layer with a warning" {
            let d = dirWith [ 1; 2; 3 ]
            flipLastByte (layerPath d 2)
            Expect.equal (AlignCheckpoint.load d 2) (AlignCheckpoint.FailsChecksum(layerPath d 2)) "checksum failure"
            match AlignCheckpoint.resumeFrom d [ 1; 2; 3 ] with
            | Ok(restored, warnings) ->
                Expect.equal (restored |> Map.toList |> List.map fst) [ 1; 3 ] "layers 1 and 3 restored"
                Expect.equal warnings.Length 1 "one warning"
                Expect.stringContains warnings[0] "layer-2.safetensors" "names the file"
                Expect.stringContains warnings[0] "layer 2 is aligned again" "says the layer is redone"
            | Error e -> failtestf "expected Ok, got %s" e
        }
        test "an unreadable last checkpoint is redone (the layer being written at a crash)" {
            let d = dirWith [ 1; 2 ]
            File.WriteAllBytes(layerPath d 2, [| 1uy; 2uy; 3uy |])
            match AlignCheckpoint.resumeFrom d [ 1; 2; 3 ] with
            | Ok(restored, warnings) ->
                Expect.equal (restored |> Map.toList |> List.map fst) [ 1 ] "layer 1 restored"
                Expect.stringContains (String.concat "\n" warnings) "layer 2 is aligned again" "layer 2 redone, said so"
            | Error e -> failtestf "expected Ok, got %s" e
        }
        test "an unreadable checkpoint below a restored layer is an error naming the file" {
            let d = dirWith [ 1; 2; 3 ]
            File.WriteAllBytes(layerPath d 2, [| 1uy; 2uy; 3uy |])
            match AlignCheckpoint.resumeFrom d [ 1; 2; 3 ] with
            | Error e -> Expect.stringContains e "layer-2.safetensors" "names the file"
            | Ok _ -> failtest "a damaged middle checkpoint must not be skipped silently"
        }
    ]
