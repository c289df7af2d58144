/// Benchmark suite "teacher": forward-pass tokens/s of the teacher (embedding → layers → logits) for the
/// stories260K shape (5 layers, D 64, GQA 8/4, vocab 512) and a 4-layer D 256 Llama (8 heads, vocab 4096),
/// with random weights: speed does not depend on the values, and the suite needs no files.
module TaylorCalibrate.Pipeline.Bench.TeacherSuite

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Bench.BenchCore

/// The benchmarked shapes: name, config, batch B, sequence T.
let cases (quick: bool) =
    let stories =
        { Family = ModelFamily.Llama; Dim = 64; Hidden = 172; Layers = 5; Heads = 8; KvHeads = 4; HeadDim = 8; Vocab = 512
          Context = 512; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.Adjacent
          TiedEmbeddings = true; QkvBias = false; OutputBias = false; QkNorm = false }
    let llama256 =
        { stories with Dim = 256; Hidden = 688; Layers = 4; Heads = 8; KvHeads = 8; HeadDim = 32; Vocab = 4096; Context = 2048
                       RopeLayout = RopeLayout.HalfSplit; TiedEmbeddings = false }
    let T = if quick then 128 else 512
    [ $"stories260K B=4 T={T}", stories, 4, T
      $"llama L4 D256 B=4 T={T}", llama256, 4, T ]

/// A teacher of the config with N(0, 0.02²) weights and unit norms.
let randomTeacher (c: ModelConfig) =
    let rnd = System.Random 1234
    let weights =
        HfLayout.assemble c (fun name shape ->
            let n = Array.fold (*) 1 shape
            if name.EndsWith "norm.weight" then Ok(Array.create n 1f)
            else Ok(Array.init n (fun _ -> float32 ((rnd.NextDouble() - 0.5) * 0.07))))
        |> Result.defaultWith (fun e -> invalidOp (TaylorCalibrate.Pipeline.InputError.describe e))
    { Config = c; Weights = weights; Source = { Path = "random"; Format = "bench"; DTypes = [ "F32" ] } }

let run (be: IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    [ for name, c, B, T in cases opts.Quick do
        use m = new DeviceDecoder(be, randomTeacher c)
        let ids = Array.init (B * T) (fun i -> (i * 7919) % c.Vocab)
        let seconds = measure be opts (fun () -> (Decoder.forward m ids B T Decoder.ForwardOptions.none).Logits.Dispose())
        let r =
            { Suite = "teacher"; Device = be.Name; Case = name; M = Some(B * T); N = Some c.Vocab; K = Some c.Dim
              Seconds = seconds; Gflops = None; TokensPerSecond = Some(float (B * T) / seconds) }
        report r
        yield r ]
