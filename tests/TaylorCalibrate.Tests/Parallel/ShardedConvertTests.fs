/// A conversion with its layers spread over several workers or ranks: one process with two CPU workers
/// (`convert --device cpu:0,cpu:1`) and two ranks of Parallel/ShardedConvert.fs (ranks as threads; each aligns
/// its share into --out/align, rank 0 assembles) give the one-process student bit for bit.
module TaylorCalibrate.Tests.Parallel.ShardedConvertTests

open System.IO
open Expecto
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Parallel
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

let private args (calib: string) (out: string) (device: string) =
    [ "convert"; "--teacher"; Path.Combine(Shared.repoRoot, "models", "demo-teacher"); "--keep"; "0"; "--init"; "taylor-calibrate"
      "--steps"; "20"; "--calib-text"; calib; "--out"; out; "--device"; device ]

[<Tests>]
let tests =
    testSequenced <| testList "Parallel.ShardedConvert" [
        test "convert --device cpu:0,cpu:1 gives the one-process student bit for bit" {
            let dir = CliRunner.tempDir ()
            try
                // The in-repo 4-layer demo teacher: layers 1, 2, 3 converted; its BPE reads any English text.
                let calib = Path.Combine(dir, "calib.txt")
                File.WriteAllText(calib, TinyDistill.stories 5 200)
                let one = Path.Combine(dir, "one")
                let r1 = CliRunner.run (args calib one "cpu")
                Expect.equal r1.ExitCode 0 $"one process (stderr: {r1.Err})"
                let expected = File.ReadAllBytes(Path.Combine(one, "model.safetensors"))
                let workers = Path.Combine(dir, "workers")
                let r2 = CliRunner.run (args calib workers "cpu:0,cpu:1")
                Expect.equal r2.ExitCode 0 $"two workers (stderr: {r2.Err})"
                Expect.equal (File.ReadAllBytes(Path.Combine(workers, "model.safetensors"))) expected "two CPU workers: bit-identical student"
            finally try Directory.Delete(dir, true) with _ -> ()
        }
        test "convert: a device list naming one device twice is refused before --out is touched" {
            let dir = CliRunner.tempDir ()
            try
                let calib = Path.Combine(dir, "calib.txt")
                File.WriteAllText(calib, TinyDistill.stories 5 200)
                let out = Path.Combine(dir, "out")
                let r = CliRunner.run (args calib out "cpu,cpu:0")
                Expect.equal r.ExitCode 2 $"exit code 2 (stderr: {r.Err})"
                Expect.equal (r.Err.Trim().Split('\n').Length) 1 $"one line: {r.Err}"
                Expect.stringContains r.Err "--device cpu,cpu:0" "names the option"
                Expect.isFalse (Directory.Exists out) "--out not created"
            finally try Directory.Delete(dir, true) with _ -> ()
        }
        test "two ranks: each aligns its share, rank 0 assembles the one-process student bit for bit" {
            let t = Stages.StudentTests.tinyTeacher ()
            let batch : Calibration.CalibrationBatch =
                { Tokens = Rand.ints 9 t.Config.Vocab (2 * 40); B = 2; T = 40; Source = "random"; Documents = 1; EvalSource = None; OverlappingDocuments = 0 }
            let cpu = Backends.cpu.Get()
            use dt = new DeviceDecoder(cpu, t)
            let trace = TeacherTrace.run dt batch [ 0; 2 ]
            let o = { Convert.ConvertOptions.defaults Convert.InitStrategy.TaylorCalibrate with Align = { Align.AlignOptions.defaults with Steps = 30 } }
            let single, _ = Convert.run cpu t trace [ 1 ] o Convert.Hooks.none CancellationToken.None
            let out = CliRunner.tempDir ()
            try
                let results = ThreadRanks.run 2 (fun ranks ->
                    use be = new Cpu.CpuBackend(1)
                    let hooks = { Convert.Hooks.none with LayerAligned = (fun i w r -> AlignCheckpoint.save out i w r) }
                    ShardedConvert.run ranks out [ DeviceWorker($"cpu:{ranks.Rank}", be) ] t trace None [ 1 ] o hooks CancellationToken.None
                    |> Option.map (fun (s, _, _) -> s))
                match results with
                | [ Some assembled; None ] -> Expect.equal assembled.Gdn single.Gdn "GDN weights bit-identical"
                | other -> failtestf "rank 0 assembles, rank 1 returns nothing: %A" (other |> List.map Option.isSome)
                Expect.equal (ShardedConvert.share 1 2 [ 0; 2; 5 ]) [ 2 ] "rank 1 of 2 aligns every second layer from the second"
            finally try System.IO.Directory.Delete(out, true) with _ -> ()
        }
    ]
