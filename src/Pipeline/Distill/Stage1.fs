/// Stage 1 of distillation (docs/method.md §7): every converted layer trains teacher-forced. The teacher runs
/// once per micro-batch and records, for each converted layer ℓ, its normed input x_ℓ = RMSNorm_attn(h_ℓ)
/// (B, T, D) and its attention sublayer output t_ℓ (B, T, D); the student's GDN layer ℓ sees the same x_ℓ
/// and is scored by the per-layer loss of Stage1Loss.fs, ‖t − s‖₂/√D averaged over tokens. Because the
/// teacher's stream is passed on, layers are independent: the total loss is the mean over layers, and each
/// layer's gradient depends on its own parameters only. Only the GDN parameters train, jointly, with one
/// AdamW (β 0.9/0.95, weight decay 0.01, lr 1e-3 cosine to 0 without warmup) and one global clip 1.0 over
/// all of them. Each layer writes its gradients into its own tensors and the loss is summed in layer order,
/// so the order the layers are run in (LayerOrder) changes no bit of the result.
module TaylorCalibrate.Pipeline.Distill.Stage1

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Training

/// In which order a step's layers run their forward and backward (the result is the same either way).
type LayerOrder =
    /// Each layer's forward then its backward, in index order: one layer's activations live at a time.
    | OneAfterAnother
    /// Every layer's forward, in reverse index order, then every backward in index order.
    | Interleaved

/// What a Stage-1 step did.
type Stage1StepReport =
    { Report: Trainer.StepReport
      /// Per converted layer (in Layers order), its loss before the update (the micro-batch-weighted mean).
      LayerLosses: float[] }

/// The Stage-1 parameter groups: every GDN tensor at `lr` with decay `weightDecay` (the trainer only
/// hands GDN tensors to the optimizer, so one group covers them).
let rules (lr: float32) (weightDecay: float32) : ParameterGroups.GroupRule list =
    [ { Group = "gdn"; Pattern = ParameterGroups.Contains ".attn."
        Treatment = ParameterGroups.Train { LearningRate = lr; WeightDecay = weightDecay } } ]

/// The GDN layers of `student` as trainable parameters (reference names), with gradients owned by `owner`.
let gdnParameters (owner: TensorOwner) (student: DeviceDecoder) : (int * GdnParams * Parameter list) list =
    [ for i, b in Array.indexed student.Blocks do
          match b.Mixer with
          | Gdn g ->
              let ps =
                  Gdn.named g |> List.map (fun (n, t) ->
                      { Parameter.Name = $"model.layers.{i}.attn.{n}"; Value = t; Grad = owner.Allocate t.Shape })
              yield i, g, ps
          | Softmax _ -> () ]

/// Trains the student's GDN layers against `teacher` (same shape; the teacher's blocks must all be softmax).
/// Micro-batches are (B, T) token ids. Dispose to free the optimizer state and buffers.
type Stage1Trainer(teacher: DeviceDecoder, student: DeviceDecoder, settings: AdamWSettings, lr: float32,
                   weightDecay: float32, order: LayerOrder) =
    let be = student.Backend
    do
        if not (obj.ReferenceEquals(teacher.Backend, be)) then invalidArg "teacher" "teacher and student must live on one backend"
        if teacher.Config.Dim <> student.Config.Dim || teacher.Config.Layers <> student.Config.Layers then
            invalidArg "teacher" "teacher and student differ in shape"
    let owner = new TensorOwner(be)
    let layers = gdnParameters owner student
    do if layers.IsEmpty then invalidArg "student" "the student has no GDN layer: Stage 1 has nothing to train"
    let parameters = layers |> List.collect (fun (_, _, ps) -> ps)
    let grads = Grads parameters
    let optimizer = new AdamW(settings, rules lr weightDecay, parameters)
    let scratch = new Scratch(be)
    let arenas = layers |> List.map (fun _ -> new Arena(be)) |> Array.ofList
    let indices = layers |> List.map (fun (i, _, _) -> i)
    let D = student.Config.Dim
    // Per-layer buffers of one micro-batch shape, reallocated when the shape changes.
    let mutable shape = [||]
    let mutable buffers : (Tensor * Tensor * Tensor * Tensor)[] = [||]   // x, target, y, dy: (B, T, D) each
    let mutable workspace : Stage1Loss.Stage1LossWorkspace option = None
    let ensure (B: int) (T: int) =
        if shape <> [| B; T |] then
            buffers <- layers |> List.map (fun _ ->
                let a () = owner.Allocate [| B; T; D |]
                a (), a (), a (), a ()) |> Array.ofList
            workspace |> Option.iter (fun w -> (w :> IDisposable).Dispose())
            workspace <- Some(new Stage1Loss.Stage1LossWorkspace(be, B * T, D))
            shape <- [| B; T |]

    /// Loss of each layer on one micro-batch; when `weight` is given, adds weight·∂(mean over layers)/∂θ.
    let run (ids: int[]) (B: int) (T: int) (weight: float32 option) : float[] =
        ensure B T
        let traced = Decoder.forward teacher ids B T { Decoder.ForwardOptions.none with Trace = Set.ofList indices }
        traced.Logits.Dispose()
        let traces = traced.Traces |> List.map (fun t -> t.Layer, t) |> Map.ofList
        let ws = workspace.Value
        let n = float32 layers.Length
        let losses = Array.zeroCreate layers.Length
        let forwardOf (k: int) =
            let li, g, _ = layers[k]
            let x, target, y, _ = buffers[k]
            be.Upload(x, ReadOnlySpan traces[li].Input)
            be.Upload(target, ReadOnlySpan traces[li].Output)
            arenas[k].Reset()
            Gdn.forward be scratch arenas[k] g x y
        let lossAndBackward (k: int) (saved: GdnSaved) =
            let _, g, _ = layers[k]
            let _, target, y, dy = buffers[k]
            match weight with
            | Some w ->
                losses[k] <- float (Stage1Loss.compute ws target y (Some dy) (w / n))
                Gdn.backward be scratch grads g saved dy None
            | None -> losses[k] <- float (Stage1Loss.compute ws target y None 1f)
        match order with
        | OneAfterAnother ->
            for k in 0 .. layers.Length - 1 do lossAndBackward k (forwardOf k)
        | Interleaved ->
            let saved = Array.zeroCreate layers.Length
            for k in layers.Length - 1 .. -1 .. 0 do saved[k] <- forwardOf k
            for k in 0 .. layers.Length - 1 do lossAndBackward k saved[k]
        losses

    /// The converted layers, ascending.
    member _.Layers = indices
    member _.Optimizer = optimizer
    /// The trained GDN tensors, in layer then file order.
    member _.Parameters = parameters

    /// Per-layer losses of the current parameters on (B, T) ids, without training.
    member _.LayerLosses(ids: int[], B: int, T: int) : float[] = run ids B T None

    /// One optimizer step over the micro-batches (each (B, T) ids; equal weights). The step's loss is the
    /// mean over layers of the layers' losses, summed in layer order.
    member _.Step(microBatches: int[] list, B: int, T: int) : Stage1StepReport =
        let mbs = Array.ofList microBatches
        let layerLosses = Array.zeroCreate layers.Length
        let report =
            Trainer.step optimizer mbs.Length (fun mb ->
                let l = run mbs[mb.Index] B T (Some mb.Weight)
                for k in 0 .. l.Length - 1 do layerLosses[k] <- layerLosses[k] + float mb.Weight * l[k]
                Array.sum l / float l.Length)
        { Report = report; LayerLosses = layerLosses }

    interface IDisposable with
        member _.Dispose() =
            (optimizer :> IDisposable).Dispose()
            workspace |> Option.iter (fun w -> (w :> IDisposable).Dispose())
            for a in arenas do (a :> IDisposable).Dispose()
            (scratch :> IDisposable).Dispose()
            (owner :> IDisposable).Dispose()
