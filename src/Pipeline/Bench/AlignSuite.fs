/// `bench --suite align`: seconds per Phase-2 alignment step (GDN layer forward + explicit backward + AdamW on
/// every trainable tensor, full batch) for a layer of hidden size 1024 with 16 heads of 64 on 4 × 256 tokens,
/// random weights and targets. Per-step time = (t(6 steps) − t(1 step)) / 5, so the fixed set-up (uploads,
/// the initial and final loss evaluations) cancels.
module TaylorCalibrate.Pipeline.Bench.AlignSuite

open System
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Bench.BenchCore

let private layerConfig (quick: bool) : ModelConfig =
    let d, h = (if quick then 256, 4 else 1024, 16)
    { Family = ModelFamily.Llama; Dim = d; Hidden = 4 * d; Layers = 1; Heads = h; KvHeads = h; HeadDim = 64; Vocab = 256
      Context = 2048; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.HalfSplit
      TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }

let run (be: IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    let c = layerConfig opts.Quick
    let B, T = 4, 256
    let rnd = Random 5
    let normal std n = Array.init n (fun _ -> float32 (std * (rnd.NextDouble() * 2.0 - 1.0) * sqrt 3.0))
    let q = c.Heads * c.HeadDim
    let w: GdnWeights =
        { Wq = normal 0.02 (q * c.Dim); Wk = normal 0.02 (q * c.Dim); Wv = normal 0.02 (q * c.Dim); Wg = normal 0.02 (q * c.Dim)
          Wa = normal 0.02 (c.Heads * c.Dim); Wb = normal 0.02 (c.Heads * c.Dim); ALog = Array.create c.Heads 0.0f
          DtBias = Array.create c.Heads -2.0f; ONorm = Array.create c.HeadDim 1.0f; Wo = normal 0.02 (c.Dim * q) }
    let trace: TeacherTrace.LayerTrace =
        { Layer = 0; X = normal 1.0 (B * T * c.Dim); Context = normal 1.0 (B * T * q); Output = normal 0.1 (B * T * c.Dim)
          MeanDistance = Array.create c.Heads 8.0; Entropy = Array.create c.Heads 2.0 }
    let timeSteps steps =
        let o = { Align.AlignOptions.defaults with Steps = steps }
        measure be { opts with MinSeconds = 0.0 } (fun () ->
            Align.alignLayer o be c trace B T w (fun _ _ -> ()) CancellationToken.None |> ignore)
    let t1, t6 = timeSteps 1, timeSteps 6
    let perStep = max 1e-9 ((t6 - t1) / 5.0)
    let r =
        { Suite = "align"; Device = be.Name; Case = $"alignment step D={c.Dim} H={c.Heads}x{c.HeadDim} B={B} T={T}"
          M = None; N = None; K = None; Seconds = perStep; Gflops = None; TokensPerSecond = Some(float (B * T) / perStep) }
    report r
    [ r ]
