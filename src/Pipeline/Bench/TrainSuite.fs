/// Benchmark suite "train": training tokens/s of a whole decoder — training forward, cross-entropy (the
/// backend's op, gradient in place of the logits), backward, AdamW over every parameter (Training/AdamW.fs) —
/// and its model FLOP rate, 6·P·tokens + 6·B·L·H·hd·T² per step (P the weights that enter a matmul: all but
/// the embedding lookup; the attention term counts QKᵀ and AV of the causal half, forward and twice for the
/// backward). On the CPU: a 4-layer D 256 Llama with GQA 8/4, F 688, vocabulary 2048 (3.95 M parameters) at
/// B 8, T 256 — the shape tools/torch-train-bench.py trains in PyTorch — with and without per-block
/// recompute, plus the fp32 GEMM rate of that run's MLP projection (M B·T, N 688, K 256), so the model FLOP
/// rate can be read as a fraction of it. On a Vulkan device a small model (lavapipe is slow). Each case
/// names the saved-activation memory per token it measured (docs/training.md, "Activation memory").
module TaylorCalibrate.Pipeline.Bench.TrainSuite

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Pipeline.Bench.BenchCore

/// The CPU shape: 4 layers, D 256, 8 query / 4 kv heads of 32, F 688, vocabulary 2048, untied head.
let llamaD256 =
    { Family = ModelFamily.Llama; Dim = 256; Hidden = 688; Layers = 4; Heads = 8; KvHeads = 4; HeadDim = 32; Vocab = 2048
      Context = 2048; NormEps = 1e-5; RopeTheta = 10000.0; RopeScaling = None; RopeLayout = RopeLayout.HalfSplit
      TiedEmbeddings = false; QkvBias = false; OutputBias = false; QkNorm = false }

/// The small shape for Vulkan devices and --quick: 2 layers, D 64, GQA 4/2 of 16, vocabulary 512.
let small =
    { llamaD256 with Dim = 64; Hidden = 172; Layers = 2; Heads = 4; KvHeads = 2; HeadDim = 16; Vocab = 512 }

/// Weights that enter a matmul (the embedding table is a lookup unless it is tied to the head).
let matmulParameters (c: ModelConfig) =
    let D, F = int64 c.Dim, int64 c.Hidden
    let perLayer = 2L * D * int64 c.QDim + 2L * D * int64 c.KvDim + 3L * D * F
    int64 c.Layers * perLayer + int64 c.Vocab * D

/// Model FLOPs of one training step on B×T tokens.
let stepFlops (c: ModelConfig) (B: int) (T: int) =
    6.0 * float (matmulParameters c) * float (B * T)
    + 6.0 * float B * float c.Layers * float c.Heads * float c.HeadDim * float T * float T

let private trainCase (be: IBackend) (opts: BenchOptions) (c: ModelConfig) (B: int) (T: int) (recompute: bool) =
    use m = new DeviceDecoder(be, TeacherSuite.randomTeacher c)
    use optimizer = new AdamW(AdamWSettings.defaults, ParameterGroups.Presets.single 1e-3f 0.01f, m.Parameters)
    let grads = Grads m.Parameters
    let ids = Array.init (B * T) (fun i -> (i * 7919 + 13) % c.Vocab)
    let targets = Array.init (B * T) (fun i -> if i % T = T - 1 then -1 else ids[i + 1])
    use targetsT = be.FromInts(targets, B * T)
    use loss = be.Allocate [| B * T |]
    let scale = 1f / float32 (B * (T - 1))
    let step () =
        Trainer.step optimizer 1 (fun _ ->
            use pass = Decoder.trainForward m ids B T { Recompute = recompute }
            be.CrossEntropy(pass.Logits, targetsT, loss, pass.Logits, scale)
            Decoder.backward m pass pass.Logits grads
            0.0)
        |> ignore
    let seconds = measure be opts step
    let savedKiB = float m.SavedBytes / float (B * T) / 1024.0
    let name = if recompute then "train step, recompute" else "train step"
    { Suite = "train"; Device = be.Name
      Case = $"{name} L{c.Layers} D{c.Dim} GQA {c.Heads}/{c.KvHeads} V{c.Vocab} B={B} T={T}: saved {savedKiB:F1} KiB/token"
      M = Some(B * T); N = Some c.Vocab; K = Some c.Dim; Seconds = seconds
      Gflops = Some(stepFlops c B T / seconds / 1e9); TokensPerSecond = Some(float (B * T) / seconds) }

let run (be: IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    let onCpu = be.Name.StartsWith "cpu"
    let c, B, T = if onCpu && not opts.Quick then llamaD256, 8, 256 else small, 2, 64
    [ for r in [ (fun () -> projectionGemm be opts "train" "the MLP projection of this run" (B * T) c.Hidden c.Dim)
                 (fun () -> trainCase be opts c B T false)
                 (fun () -> trainCase be opts c B T true) ] do
        let record = r ()
        report record
        yield record ]
