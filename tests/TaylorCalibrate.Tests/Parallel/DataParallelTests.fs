/// Data-parallel Stage 2 (Pipeline/Parallel/DataParallel.fs, Distill.runRanked) with ranks as threads of one
/// process: rows split evenly or are refused, ranks with other settings are refused naming the setting, and
/// two ranks train the same trajectory as one process with the same global batch, within float32
/// summation-order tolerance, with rank 0 alone writing.
module TaylorCalibrate.Tests.Parallel.DataParallelTests

open System
open System.IO
open System.Threading
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Backend.Mpi
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Parallel
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Distill

let private ok r = r |> Result.defaultWith (fun e -> failtest (InputError.describe e))
let private silent = { new IProgress<Distill.DistillProgress> with member _.Report _ = () }

/// Relative agreement of two Stage-2 trajectories. One process sums each weight gradient over the B·T rows of
/// a micro-batch inside one GEMM; two ranks sum two halves and add the halves once, a different float32
/// summation order: each gradient element differs by a few ulps (~1e-7 relative, K·2^-24 at worst for
/// K = 64 rows). AdamW's update m/√v is scale-free, so that relative error passes into each update without
/// growing, and the losses of a few steps at these rates differ by ~1e-7 relative (4e-7 measured here and
/// under mpirun). 1e-5 leaves a wide margin yet catches a missing or double-counted rank (≥ 1e-3).
let stage2Tolerance = 1e-5

let expectSameTrajectory (a: float list) (b: float list) (what: string) =
    Expect.equal a.Length b.Length $"{what}: same number of points"
    List.iteri2 (fun i (x: float) (y: float) ->
        let rel = abs (x - y) / max (abs y) 1e-30
        Expect.isLessThanOrEqual rel stage2Tolerance $"{what}: point {i}: {x} vs {y} (relative {rel:G3})") a b

[<Tests>]
let tests =
    testList "Parallel.DataParallel" [
        test "rank r takes rows [r·B/N, (r+1)·B/N)" {
            let shards = ThreadRanks.run 2 (fun ranks -> DataParallel.shardRows ranks 8)
            Expect.equal shards [ (0, 4); (4, 4) ] "halves"
            Expect.throwsT<ArgumentException> (fun () -> ThreadRanks.run 2 (fun ranks -> DataParallel.shardRows ranks 7) |> ignore) "7 rows over 2 ranks"
        }
        test "the rank-ordered sum is the same on every rank and adds in rank order" {
            // 1 + 2^-24 + 2^-24 in float32: left to right gives 1 (each 2^-24 is lost), so the order shows.
            let tiny = MathF.Pow(2f, -24f)
            let sums = ThreadRanks.run 3 (fun ranks ->
                let data = [| (if ranks.Rank = 0 then 1f else tiny); float32 ranks.Rank |]
                ranks.SumInRankOrder(Span data)
                data)
            for s in sums do Expect.equal s [| 1f; 3f |] "((1 + 2^-24) + 2^-24) = 1 and 0 + 1 + 2 = 3, on every rank"
        }
        test "ranks that disagree on a setting are refused, naming it" {
            let results = ThreadRanks.run 2 (fun ranks ->
                let settings = Map [ "batch", "8"; "seed", (if ranks.Rank = 1 then "5" else "3") ]
                DataParallel.agree ranks settings)
            match results with
            | [ Error zero; Error one ] ->
                Expect.stringContains one "setting 'seed'" "rank 1 names the setting"
                Expect.stringContains one "'5' here, '3' on rank 0" "with both values"
                Expect.stringContains zero "rank 1 disagrees with rank 0 on setting 'seed' ('3' on rank 0)" "rank 0 names the rank and the setting"
            | other -> failtestf "both ranks refuse: %A" other
            let agreeing = ThreadRanks.run 2 (fun ranks -> DataParallel.agree ranks (Map [ "batch", "8" ]))
            Expect.equal agreeing [ Ok(); Ok() ] "equal settings pass"
        }
        test "cpu: two ranks train Stage 2 like one process with the same global batch; rank 0 alone writes" {
            let f = TinyDistill.create ()
            try
                let sources : DistillInputs.DistillSources =
                    { StudentDir = f.StudentDir; TeacherPath = f.TeacherDir; TrainTexts = [ f.TrainText ]; EvalText = Some f.EvalText
                      SeqLen = 16; Seed = 3UL; EvalMaxTokens = None }
                let inputs = DistillInputs.load sources |> ok
                // 4 steps of 2 micro-batches of 4 rows (2 per rank), a checkpoint every 2 steps.
                let options = { Distill.DistillOptions.defaults (Distill.Stage2(3e-3f, 1e-3f)) 512L with Batch = 4; Accum = 2; CheckpointEvery = 256L }
                let one = Path.Combine(f.Root, "one")
                use be = new Cpu.CpuBackend()
                let r1 = Distill.run be inputs options one silent CancellationToken.None |> ok
                let two = Path.Combine(f.Root, "two")
                let results = ThreadRanks.run 2 (fun ranks ->
                    use rankBe = new Cpu.CpuBackend(1)
                    Distill.runRanked ranks rankBe inputs options two silent CancellationToken.None |> ok)
                let r2 = results.Head
                let losses (r: Distill.DistillResult) = r.Curve.Points |> List.tail |> List.map (fun p -> p.Loss)
                expectSameTrajectory (losses r2) (losses r1) "training loss at each checkpoint"
                expectSameTrajectory (r2.Curve.Points |> List.map (fun p -> p.Perplexity)) (r1.Curve.Points |> List.map (fun p -> p.Perplexity)) "held-out perplexity"
                Expect.isTrue (File.Exists(Path.Combine(two, "checkpoints", "latest"))) "rank 0 wrote the checkpoints"
                Expect.isTrue (Double.IsNaN (List.last results[1].Curve.Points).Perplexity) "rank 1 did not evaluate"
                let a = File.ReadAllBytes(Path.Combine(one, "model.safetensors"))
                let b = File.ReadAllBytes(Path.Combine(two, "model.safetensors"))
                Expect.equal b.Length a.Length "the student written once, same size"
            finally TinyDistill.delete f
        }
        test "Stage 1 and batches that do not split are refused under several ranks" {
            let f = TinyDistill.create ()
            try
                let sources : DistillInputs.DistillSources =
                    { StudentDir = f.StudentDir; TeacherPath = f.TeacherDir; TrainTexts = [ f.TrainText ]; EvalText = None
                      SeqLen = 16; Seed = 3UL; EvalMaxTokens = None }
                let inputs = DistillInputs.load sources |> ok
                let refusal options =
                    ThreadRanks.run 2 (fun ranks ->
                        use rankBe = new Cpu.CpuBackend(1)
                        match Distill.runRanked ranks rankBe inputs options (Path.Combine(f.Root, "x")) silent CancellationToken.None with
                        | Error e -> InputError.describe e
                        | Ok _ -> "ran") |> List.head
                Expect.stringContains (refusal { Distill.DistillOptions.defaults (Distill.Stage2(1e-3f, 1e-4f)) 96L with Batch = 3 }) "--batch" "odd batch"
                Expect.stringContains (refusal (Distill.DistillOptions.defaults (Distill.Stage1 1e-3f) 256L)) "--stage" "Stage 1"
            finally TinyDistill.delete f
        }
    ]
