/// Benchmark suite "distill": tokens/s of one Stage-1 and one Stage-2 optimizer step (Distill/Stage1.fs,
/// Distill/Stage2.fs) of a hybrid that keeps layer 0 softmax and converts the rest to GDN (the naive
/// skeleton of a random teacher: speed does not depend on the values). Stage 1 = the teacher's traced
/// forward + every GDN layer's forward, loss and backward + AdamW; Stage 2 = the teacher's forward + the
/// student's forward, KL and backward + AdamW, so the teacher is part of the cost of both. The model FLOP
/// rate uses Distill.flopsPerToken (matmul weights only) and is meant to be read against the same run's
/// fp32 GEMM rate at the MLP projection shape (the first record). On the CPU: the stories260K shape and a
/// 4-layer D 256 Llama (GQA 8/4, vocabulary 2048) at B 8, T 256; on a Vulkan device or with --quick, the
/// stories260K shape at B 2, T 64 (lavapipe is slow).
module TaylorCalibrate.Pipeline.Bench.DistillSuite

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Pipeline.Distill
open TaylorCalibrate.Pipeline.Bench.BenchCore

/// The stories260K shape (5 layers, D 64, GQA 8/4 of 8, F 172, vocabulary 512).
let stories260K = (TeacherSuite.cases true |> List.head |> fun (_, c, _, _) -> c)

let private settings (schedule: Schedule.Schedule) =
    { AdamWSettings.defaults with Beta2 = 0.95f; Schedule = schedule }

let private record (be: IBackend) (case: string) (c: ModelConfig) (B: int) (T: int) (flopsPerToken: float) (seconds: float) =
    { Suite = "distill"; Device = be.Name; Case = case; M = Some(B * T); N = Some c.Vocab; K = Some c.Dim
      Seconds = seconds; Gflops = Some(flopsPerToken * float (B * T) / seconds / 1e9)
      TokensPerSecond = Some(float (B * T) / seconds) }

let private stageCases (be: IBackend) (opts: BenchOptions) (name: string) (c: ModelConfig) (B: int) (T: int) =
    let teacherModel = TeacherSuite.randomTeacher c
    let student = Skeleton.build teacherModel [ 0 ] GqaExpand.Heads 0
    let gdnLayers = student.Gdn.Count
    use teacher = new DeviceDecoder(be, teacherModel)
    use hybrid = new DeviceDecoder(be, student)
    let ids = Array.init (B * T) (fun i -> (i * 7919 + 13) % c.Vocab)
    let shape = $"{name} keep [0] ({gdnLayers} GDN) B={B} T={T}"
    let stage1 =
        use trainer = new Stage1.Stage1Trainer(teacher, hybrid, settings (Schedule.Cosine 1_000_000), 1e-3f, 0.01f, Stage1.OneAfterAnother)
        let seconds = measure be opts (fun () -> trainer.Step([ ids ], B, T) |> ignore)
        record be $"stage 1 step, {shape}" c B T (Distill.flopsPerToken (Distill.Stage1 1e-3f) c gdnLayers) seconds
    let stage2 =
        use trainer = new Stage2.Stage2Trainer(teacher, hybrid, settings Schedule.Constant,
                                               ParameterGroups.Presets.stage2 1e-4f 7e-6f 0.01f, false)
        let seconds = measure be opts (fun () -> trainer.Step([ ids ], B, T) |> ignore)
        record be $"stage 2 step, {shape}" c B T (Distill.flopsPerToken (Distill.Stage2(1e-4f, 7e-6f)) c gdnLayers) seconds
    [ stage1; stage2 ]

let run (be: IBackend) (opts: BenchOptions) (report: BenchRecord -> unit) =
    let onCpu = be.Name.StartsWith "cpu"
    let full = onCpu && not opts.Quick
    let shapes =
        if full then [ "stories260K", stories260K, 8, 256; "llama L4 D256", TrainSuite.llamaD256, 8, 256 ]
        else [ "stories260K", stories260K, 2, 64 ]
    let _, gemmShape, gB, gT = List.last shapes
    [ let g = projectionGemm be opts "distill" "the MLP projection of the last shape: the FLOP rates are read against it" (gB * gT) gemmShape.Hidden gemmShape.Dim
      report g
      yield g
      for name, c, B, T in shapes do
          for r in stageCases be opts name c B T do
              report r
              yield r ]
