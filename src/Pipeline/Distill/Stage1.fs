/// Stage 1 of distillation (docs/method.md §7): every converted layer trains teacher-forced. The teacher runs
/// once per micro-batch and records, for each converted layer ℓ, its normed input x_ℓ = RMSNorm_attn(h_ℓ)
/// (B, T, D) and its attention sublayer output t_ℓ (B, T, D); the student's GDN layer ℓ sees the same x_ℓ
/// and is scored by the per-layer loss of Stage1Loss.fs, ‖t − s‖₂/√D averaged over tokens. Because the
/// teacher's stream is passed on, layers are independent: the total loss is the mean over layers, and each
/// layer's gradient depends on its own parameters only. Only the GDN parameters train, jointly, with one
/// AdamW (β 0.9/0.95, weight decay 0.01, lr 1e-3 cosine to 0 without warmup) and one global clip 1.0 over
/// all of them. Each layer writes its gradients into its own tensors and the loss is summed in layer order,
/// so the order the layers are run in (LayerOrder) changes no bit of the result.
/// The layers can also be spread over the devices of a device list (docs/architecture.md "Scale-out"): the
/// teacher still runs on the first device, each layer trains on its own device from the teacher's x_ℓ and t_ℓ
/// uploaded there, the global clip norm is summed on the host in layer then tensor order from each tensor's
/// Σg² (the same float32 sum, in the same order, as the CPU backend's clip), and each device applies AdamW to
/// its own layers. So a run on two CPU workers is bit-identical to a run on one CPU.
module TaylorCalibrate.Pipeline.Distill.Stage1

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Layers
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Parallel
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

/// Some converted layers on one backend: their parameters (with gradients) and the buffers of their forward,
/// loss and backward. `layers` are (position among all converted layers, layer index, weights, parameters).
type private LayerGroup(be: IBackend, layers: (int * int * GdnParams * Parameter list) list, D: int) =
    let owner = new TensorOwner(be)
    let grads = Grads(layers |> List.collect (fun (_, _, _, ps) -> ps))
    let scratch = new Scratch(be)
    let slot = layers |> List.mapi (fun j (k, _, _, _) -> k, j) |> Map.ofList
    let arenas = layers |> List.map (fun _ -> new Arena(be)) |> Array.ofList
    let saved : GdnSaved option[] = Array.zeroCreate layers.Length
    // Per-layer buffers of one micro-batch shape, reallocated when the shape changes.
    let mutable shape = [||]
    let mutable buffers : (Tensor * Tensor * Tensor * Tensor)[] = [||]   // x, target, y, dy: (B, T, D) each
    let mutable workspace : Stage1Loss.Stage1LossWorkspace option = None
    member _.Backend = be
    member _.Parameters = layers |> List.collect (fun (_, _, _, ps) -> ps)
    /// Sizes the buffers for (B, T) micro-batches.
    member _.Ensure(B: int, T: int) =
        if shape <> [| B; T |] then
            buffers <- layers |> List.map (fun _ ->
                let a () = owner.Allocate [| B; T; D |]
                a (), a (), a (), a ()) |> Array.ofList
            workspace |> Option.iter (fun w -> (w :> IDisposable).Dispose())
            workspace <- Some(new Stage1Loss.Stage1LossWorkspace(be, B * T, D))
            shape <- [| B; T |]
    /// Forward of converted layer k on the teacher's x_ℓ, kept for its backward. traces: the teacher's, by layer.
    member _.Forward(k: int, traces: Map<int, Decoder.LayerTrace>) =
        let j = slot[k]
        let _, li, g, _ = layers[j]
        let x, target, y, _ = buffers[j]
        be.Upload(x, ReadOnlySpan traces[li].Input)
        be.Upload(target, ReadOnlySpan traces[li].Output)
        arenas[j].Reset()
        saved[j] <- Some(Gdn.forward be scratch arenas[j] g x y)
    /// Loss of converted layer k after its Forward; with `gradScale`, adds gradScale·∂loss/∂θ to its gradients.
    member _.LossAndBackward(k: int, gradScale: float32 option) : float =
        let j = slot[k]
        let _, _, g, _ = layers[j]
        let _, target, y, dy = buffers[j]
        let s = saved[j].Value
        saved[j] <- None
        match gradScale with
        | Some w ->
            let l = float (Stage1Loss.compute workspace.Value target y (Some dy) w)
            Gdn.backward be scratch grads g s dy None
            l
        | None -> float (Stage1Loss.compute workspace.Value target y None 1f)
    interface IDisposable with
        member _.Dispose() =
            workspace |> Option.iter (fun w -> (w :> IDisposable).Dispose())
            for a in arenas do (a :> IDisposable).Dispose()
            (scratch :> IDisposable).Dispose()
            (owner :> IDisposable).Dispose()

/// A device's share when the layers are spread over several: its copies of its layers' weights with their
/// gradients, its LayerGroup, and an AdamW over them that does not clip (the trainer clips globally first).
type private DeviceShare(worker: DeviceWorker, home: (int * int * GdnParams * Parameter list) list, D: int,
                         settings: AdamWSettings, lr: float32, weightDecay: float32) =
    let be = worker.Backend
    let owner = new TensorOwner(be)
    let layers =
        home |> List.map (fun (k, li, g, ps) ->
            let copy = Gdn.upload owner g.Dims (Gdn.download g)
            let named = Gdn.named copy |> Map.ofList
            let suffix (p: Parameter) = p.Name.Substring(p.Name.IndexOf ".attn." + ".attn.".Length)
            k, li, copy, ps |> List.map (fun p -> { p with Value = named[suffix p]; Grad = owner.Allocate p.Value.Shape }))
    let group = new LayerGroup(be, layers, D)
    let optimizer = new AdamW({ settings with ClipNorm = None }, rules lr weightDecay, group.Parameters)
    let scalar = be.Allocate [| 1 |]
    member _.Worker = worker
    member _.Group = group
    member _.Optimizer = optimizer
    /// (parameter name, Σg²) of each trained gradient, in parameter order.
    member _.SquaredNorms() : (string * float32)[] =
        [| for t in optimizer.Trained do
               be.Reduce(ReduceOp.SumOfSquares, t.Parameter.Grad, scalar)
               yield t.Parameter.Name, scalar.ToArray()[0] |]
    /// Multiplies every gradient by `s`.
    member _.ScaleGradients(s: float32) = for t in optimizer.Trained do be.Scale(t.Parameter.Grad, s, t.Parameter.Grad)
    /// The home parameter of each copy (by name) with the copy.
    member _.Pairs = List.zip (home |> List.collect (fun (_, _, _, ps) -> ps)) group.Parameters
    interface IDisposable with
        member _.Dispose() =
            scalar.Dispose()
            (optimizer :> IDisposable).Dispose()
            (group :> IDisposable).Dispose()
            (owner :> IDisposable).Dispose()

/// Trains the student's GDN layers against `teacher` (same shape; the teacher's blocks must all be softmax),
/// with the converted layers spread round-robin over `workers` (the k-th converted layer on worker k mod N);
/// teacher and student live on the first worker's backend, which also runs the teacher. With several workers
/// each one trains copies of its layers: `Gather` brings their state back into the student and Optimizer (for
/// evaluation, checkpoints and the download), `Scatter` sends a restored Optimizer's state out. A layer that
/// fails is reported with its device (LayerScheduler.JobsFailedException). Micro-batches are (B, T) token ids.
/// Dispose to free the optimizer state and buffers.
type Stage1Trainer(workers: DeviceWorker list, teacher: DeviceDecoder, student: DeviceDecoder, settings: AdamWSettings, lr: float32,
                   weightDecay: float32, order: LayerOrder) =
    let be = student.Backend
    do
        if not (obj.ReferenceEquals(teacher.Backend, be)) then invalidArg "teacher" "teacher and student must live on one backend"
        match workers with
        | [] -> invalidArg "workers" "at least one device is needed"
        | w :: _ when not (obj.ReferenceEquals(w.Backend, be)) ->
            invalidArg "workers" $"the first device {w.Id} must be the backend the teacher and student live on ({be.Name})"
        | _ -> ()
        if teacher.Config.Dim <> student.Config.Dim || teacher.Config.Layers <> student.Config.Layers then
            invalidArg "teacher" "teacher and student differ in shape"
    let owner = new TensorOwner(be)
    let layers = gdnParameters owner student
    do if layers.IsEmpty then invalidArg "student" "the student has no GDN layer: Stage 1 has nothing to train"
    let parameters = layers |> List.collect (fun (_, _, ps) -> ps)
    let optimizer = new AdamW(settings, rules lr weightDecay, parameters)
    let indices = layers |> List.map (fun (i, _, _) -> i)
    let D = student.Config.Dim
    let positioned = layers |> List.mapi (fun k (li, g, ps) -> k, li, g, ps)
    let single = workers.Length = 1
    let ownerOf (k: int) = k % workers.Length
    // One device: the student's own tensors and the Optimizer. Several: a share per device that has layers.
    let homeGroup = if single then Some(new LayerGroup(be, positioned, D)) else None
    let shares =
        if single then [||]
        else
            workers |> List.mapi (fun wi w -> wi, w) |> List.choose (fun (wi, w) ->
                match positioned |> List.filter (fun (k, _, _, _) -> ownerOf k = wi) with
                | [] -> None
                | mine -> Some(wi, new DeviceShare(w, mine, D, settings, lr, weightDecay)))
            |> Map.ofList
            |> fun m -> Array.init workers.Length (fun wi -> m.TryFind wi)
    let groupOf (k: int) : LayerGroup =
        match homeGroup with
        | Some g -> g
        | None -> shares[ownerOf k].Value.Group
    let workerShares () = shares |> Array.choose id |> List.ofArray
    let pinned (jobs: int list) (work: int -> 'r) : 'r list =
        LayerScheduler.runPinned workers jobs ownerOf (fun _ k -> work k) Threading.CancellationToken.None
        |> LayerScheduler.orRaise (fun k -> $"Stage 1 of layer {indices[k]}")
        |> List.map (fun (_, _, r) -> r)
    let onEveryShare (work: DeviceShare -> 'r) : 'r list =
        let mine = workerShares ()
        LayerScheduler.runPinned workers mine (fun s -> List.findIndex (fun (w: DeviceWorker) -> w.Id = s.Worker.Id) workers) (fun _ s -> work s)
                                 Threading.CancellationToken.None
        |> LayerScheduler.orRaise (fun s -> $"Stage 1 on {s.Worker.Id}")
        |> List.map (fun (_, _, r) -> r)

    /// Loss of each layer on one micro-batch; when `weight` is given, adds weight·∂(mean over layers)/∂θ.
    let run (ids: int[]) (B: int) (T: int) (weight: float32 option) : float[] =
        match homeGroup with
        | Some g -> g.Ensure(B, T)
        | None -> for s in workerShares () do s.Group.Ensure(B, T)
        let traced = Decoder.forward teacher ids B T { Decoder.ForwardOptions.none with Trace = Set.ofList indices }
        traced.Logits.Dispose()
        let traces = traced.Traces |> List.map (fun t -> t.Layer, t) |> Map.ofList
        let n = float32 layers.Length
        let scale = weight |> Option.map (fun w -> w / n)
        let losses = Array.zeroCreate layers.Length
        let all = [ 0 .. layers.Length - 1 ]
        match order with
        | OneAfterAnother ->
            pinned all (fun k ->
                let g = groupOf k
                g.Forward(k, traces)
                losses[k] <- g.LossAndBackward(k, scale)) |> ignore
        | Interleaved ->
            pinned (List.rev all) (fun k -> (groupOf k).Forward(k, traces)) |> ignore
            pinned all (fun k -> losses[k] <- (groupOf k).LossAndBackward(k, scale)) |> ignore
        losses

    /// The global clip over every device's gradients, then each device's AdamW (see the module comment).
    let stepShares () : StepStats =
        let sums = onEveryShare (fun s -> s.SquaredNorms()) |> Array.concat |> Map.ofArray
        let mutable total = 0f
        for t in optimizer.Trained do total <- total + sums[t.Parameter.Name]    // parameter order, as the clip sums
        let norm = MathF.Sqrt total
        let step = (workerShares ()).Head.Optimizer.StepsTaken + 1
        if not (Single.IsFinite norm) then
            let bad = optimizer.Trained |> List.map (fun t -> t.Parameter.Name) |> List.filter (fun n -> not (Single.IsFinite sums[n]))
            raise (NonFiniteGradientException(step, bad))
        match settings.ClipNorm with
        | Some c when norm > c ->
            let f = c / (norm + 1e-6f)
            onEveryShare (fun s -> s.ScaleGradients f) |> ignore
        | _ -> ()
        let stats = onEveryShare (fun s -> s.Optimizer.Step()) |> List.head
        { stats with GradNorm = float norm }

    /// One device: Layers on its own ([DeviceWorker(be.Name, be)]).
    new(teacher: DeviceDecoder, student: DeviceDecoder, settings: AdamWSettings, lr: float32, weightDecay: float32, order: LayerOrder) =
        new Stage1Trainer([ DeviceWorker(student.Backend.Name, student.Backend) ], teacher, student, settings, lr, weightDecay, order)

    /// The converted layers, ascending.
    member _.Layers = indices
    /// The optimizer of the student's own GDN tensors (with several devices, current after Gather).
    member _.Optimizer = optimizer
    /// The trained GDN tensors, in layer then file order (with several devices, current after Gather).
    member _.Parameters = parameters
    /// The device each converted layer trains on, by layer index.
    member _.Devices : Map<int, string> = positioned |> List.map (fun (k, li, _, _) -> li, workers[ownerOf k].Id) |> Map.ofList

    /// Per-layer losses of the current parameters on (B, T) ids, without training.
    member _.LayerLosses(ids: int[], B: int, T: int) : float[] = run ids B T None

    /// One optimizer step over the micro-batches (each (B, T) ids; equal weights). The step's loss is the
    /// mean over layers of the layers' losses, summed in layer order.
    member _.Step(microBatches: int[] list, B: int, T: int) : Stage1StepReport =
        let mbs = Array.ofList microBatches
        let layerLosses = Array.zeroCreate layers.Length
        let lossAndGrad (mb: Trainer.MicroBatch) =
            let l = run mbs[mb.Index] B T (Some mb.Weight)
            for k in 0 .. l.Length - 1 do layerLosses[k] <- layerLosses[k] + float mb.Weight * l[k]
            Array.sum l / float l.Length
        let report =
            if single then Trainer.step optimizer mbs.Length lossAndGrad
            else
                // Trainer.stepWeighted's accumulation, with the step spread over the devices.
                let weights = Trainer.equalWeights mbs.Length
                for s in workerShares () do s.Optimizer.ZeroGrads()
                let mutable loss = 0.0
                for i in 0 .. weights.Length - 1 do
                    loss <- loss + float weights[i] * lossAndGrad { Index = i; Count = weights.Length; Weight = weights[i] }
                let s = stepShares ()
                { Step = s.Step; Loss = loss; GradNorm = s.GradNorm; LrFactor = s.LrFactor; LearningRates = s.LearningRates }
        { Report = report; LayerLosses = layerLosses }

    /// With several devices, copies every layer's trained weights, AdamW moments and step count into the
    /// student and Optimizer (before an evaluation, a checkpoint or the download); nothing on one device.
    member _.Gather() =
        if not single then
            let shareList = workerShares ()
            for s in shareList do
                for home, copy in s.Pairs do be.Upload(home.Value, ReadOnlySpan(copy.Value.ToArray()))
            let moments =
                shareList |> List.collect (fun s -> s.Optimizer.Trained |> List.map (fun t -> t.Parameter.Name, (t.M.ToArray(), t.V.ToArray())))
                |> Map.ofList
            optimizer.Restore(shareList.Head.Optimizer.StepsTaken, moments)

    /// With several devices, copies the student's GDN weights and the Optimizer's moments and step count to
    /// every device's layers (after Optimizer was restored from a checkpoint); nothing on one device.
    member _.Scatter() =
        if not single then
            let moments = optimizer.Trained |> List.map (fun t -> t.Parameter.Name, (t.M.ToArray(), t.V.ToArray())) |> Map.ofList
            for s in workerShares () do
                for home, copy in s.Pairs do s.Worker.Backend.Upload(copy.Value, ReadOnlySpan(home.Value.ToArray()))
                s.Optimizer.Restore(optimizer.StepsTaken, moments)

    interface IDisposable with
        member _.Dispose() =
            for s in workerShares () do (s :> IDisposable).Dispose()
            homeGroup |> Option.iter (fun g -> (g :> IDisposable).Dispose())
            (optimizer :> IDisposable).Dispose()
            (owner :> IDisposable).Dispose()
