/// The five initialisation strategies (docs/method.md §5) composed from the stages:
///   naive = Skeleton; zero-gate = Skeleton with W_g = 0; taylor-init = Skeleton + Phase 1;
///   alignment-only = Skeleton + Phase 2; taylor-calibrate = Skeleton + Phase 1 + Phase 2;
///   and the project's calibrate-plus = Skeleton + CalibratePlus (guarded Phase 1, o_proj refit, minibatch
///   alignment selected on held-out calibration text).
/// Layers are calibrated independently (teacher-forced), one after another in index order; hooks let the
/// caller persist each aligned layer and resume from persisted ones.
module TaylorCalibrate.Pipeline.Stages.Convert

open System.Diagnostics
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Stages.TeacherTrace
open TaylorCalibrate.Pipeline.Parallel

/// An initialisation strategy.
[<RequireQualifiedAccess>]
type InitStrategy =
    | Naive
    | ZeroGate
    | TaylorInit
    | AlignmentOnly
    | TaylorCalibrate
    /// The project's initialisation (CalibratePlus.fs); not one of the paper's.
    | CalibratePlus

module InitStrategy =
    /// The paper's five (docs/method.md §5).
    let published = [ InitStrategy.Naive; InitStrategy.ZeroGate; InitStrategy.TaylorInit; InitStrategy.AlignmentOnly; InitStrategy.TaylorCalibrate ]
    let all = published @ [ InitStrategy.CalibratePlus ]
    let name =
        function
        | InitStrategy.Naive -> "naive"
        | InitStrategy.ZeroGate -> "zero-gate"
        | InitStrategy.TaylorInit -> "taylor-init"
        | InitStrategy.AlignmentOnly -> "alignment-only"
        | InitStrategy.TaylorCalibrate -> "taylor-calibrate"
        | InitStrategy.CalibratePlus -> "calibrate-plus"
    let parse (s: string) = all |> List.tryFind (fun x -> name x = s)
    let usesPhase1 = function InitStrategy.TaylorInit | InitStrategy.TaylorCalibrate -> true | _ -> false
    let usesPhase2 = function InitStrategy.AlignmentOnly | InitStrategy.TaylorCalibrate -> true | _ -> false
    /// Any alignment (Phase 2 or calibrate-plus's): persisted per layer, resumable.
    let aligns s = usesPhase2 s || s = InitStrategy.CalibratePlus
    /// naive and zero-gate are functions of the teacher's weights alone: they read no teacher trace.
    let needsTrace = function InitStrategy.Naive | InitStrategy.ZeroGate -> false | _ -> true

/// Everything a conversion is parameterised by.
type ConvertOptions =
    { Strategy: InitStrategy
      Expand: GqaExpand
      Seed: int
      Taylor: TaylorInit.TaylorOptions
      Align: Align.AlignOptions
      Plus: CalibratePlus.PlusOptions }

module ConvertOptions =
    let defaults strategy =
        { Strategy = strategy; Expand = GqaExpand.Heads; Seed = 0; Taylor = TaylorInit.TaylorOptions.defaults
          Align = Align.AlignOptions.defaults; Plus = CalibratePlus.PlusOptions.defaults }

/// What happened to one converted layer (the report's rows).
type LayerReport =
    { Layer: int
      MeanDistance: float[]
      Entropy: float[]
      Phase1: TaylorInit.Phase1Info option
      Alignment: Align.AlignResult option
      /// Fit of the final layer to the teacher output on the calibration batch.
      Fit: Align.LayerFit
      Seconds: float }

/// Callbacks of a conversion (all optional in effect: see Hooks.none).
type Hooks =
    { /// A previously aligned layer (resume), if persisted.
      Resume: int -> (GdnWeights * Align.AlignResult) option
      /// Called after a layer's alignment finished.
      LayerAligned: int -> GdnWeights -> Align.AlignResult -> unit
      /// (layer, step, loss) during alignment.
      Step: int -> int -> float -> unit
      /// (layer) when a layer starts.
      LayerStarted: int -> unit }

module Hooks =
    let none = { Resume = (fun _ -> None); LayerAligned = (fun _ _ _ -> ()); Step = (fun _ _ _ -> ()); LayerStarted = ignore }

/// zero-gate's W_g = 0 (docs/method.md §5); every other strategy keeps the skeleton's fresh gate.
let private gateInit (o: ConvertOptions) (naive: GdnWeights) =
    if o.Strategy = InitStrategy.ZeroGate then { naive with Wg = Array.zeroCreate naive.Wg.Length } else naive

/// Converts one layer from its naive weights on `be`: its report and final weights. Depends only on the layer's
/// own trace and options, so it gives the same result on any backend of the same kind.
let private convertLayer (be: IBackend) (c: ModelConfig) (trace: TeacherTrace) (dev: TeacherTrace option) (o: ConvertOptions)
                         (hooks: Hooks) (ct: CancellationToken) (i: int) (naive: GdnWeights) : LayerReport * GdnWeights =
    let watch = Stopwatch.StartNew()
    hooks.LayerStarted i
    let tr = trace.Layers[i]
    let afterGate = gateInit o naive
    let afterPhase1, phase1 =
        if InitStrategy.usesPhase1 o.Strategy then
            let w, info = TaylorInit.apply o.Taylor be c tr trace.B trace.T afterGate
            w, Some info
        else afterGate, None
    let final, alignment, phase1 =
        if o.Strategy = InitStrategy.CalibratePlus then
            match hooks.Resume i with
            | Some(w, r) -> w, Some r, None
            | None ->
                let fit : CalibratePlus.LayerSet = { Trace = tr; B = trace.B }
                let devSet = dev |> Option.map (fun d -> ({ Trace = d.Layers[i]; B = d.B } : CalibratePlus.LayerSet))
                let w, r = CalibratePlus.run o.Plus o.Taylor be c fit devSet trace.T o.Seed afterGate (hooks.Step i) ct
                hooks.LayerAligned i w r.Alignment
                w, Some r.Alignment, r.Phase1
        elif InitStrategy.usesPhase2 o.Strategy then
            match hooks.Resume i with
            | Some(w, r) -> w, Some r, phase1
            | None ->
                let w, r = Align.alignLayer o.Align be c tr trace.B trace.T afterPhase1 (hooks.Step i) ct
                hooks.LayerAligned i w r
                w, Some r, phase1
        else afterPhase1, None, phase1
    let fit = Align.fit be c tr trace.B trace.T final
    { Layer = i; MeanDistance = tr.MeanDistance; Entropy = tr.Entropy; Phase1 = phase1; Alignment = alignment
      Fit = fit; Seconds = watch.Elapsed.TotalSeconds },
    final

/// Hooks that several worker threads may call at once: each call holds one lock (they are cheap: progress and
/// writing one layer's file).
let private serialised (h: Hooks) : Hooks =
    let gate = obj ()
    { Resume = (fun i -> lock gate (fun () -> h.Resume i))
      LayerAligned = (fun i w r -> lock gate (fun () -> h.LayerAligned i w r))
      Step = (fun i s l -> lock gate (fun () -> h.Step i s l))
      LayerStarted = (fun i -> lock gate (fun () -> h.LayerStarted i)) }

/// Converts with the layers spread over several backends (Parallel/LayerScheduler.fs), returning also the
/// device that converted each layer. Same student and reports as `runWith` on one backend of the same kind. A
/// layer that fails raises LayerScheduler.JobsFailedException naming it and its device, after the other
/// layers finished (and were persisted by hooks.LayerAligned).
let runOnWorkers (workers: DeviceWorker list) (teacher: Teacher) (trace: TeacherTrace) (dev: TeacherTrace option) (kept: int list)
                 (o: ConvertOptions) (hooks: Hooks) (ct: CancellationToken) : Student * LayerReport list * Map<int, string> =
    let skeleton = Skeleton.build teacher kept o.Expand o.Seed
    let hooks = if workers.Length > 1 then serialised hooks else hooks
    let jobs = skeleton.Gdn |> Map.toList
    let finished =
        LayerScheduler.run workers jobs (fun w (i, naive) -> convertLayer w.Backend teacher.Config trace dev o hooks ct i naive) ct
        |> LayerScheduler.orRaise (fun (i, _) -> $"layer {i}")
    let layers = finished |> List.map (fun ((i, _), _, (_, w)) -> i, w)
    let reports = finished |> List.map (fun (_, _, (r, _)) -> r)
    let devices = finished |> List.map (fun ((i, _), d, _) -> i, d) |> Map.ofList
    { skeleton with Gdn = Map layers; Init = InitStrategy.name o.Strategy }, reports, devices

/// Converts: the student and one report per converted layer. `dev` is the trace of held-out calibration text
/// (calibrate-plus selects on it; the published strategies ignore it).
let runWith (be: IBackend) (teacher: Teacher) (trace: TeacherTrace) (dev: TeacherTrace option) (kept: int list) (o: ConvertOptions)
            (hooks: Hooks) (ct: CancellationToken) : Student * LayerReport list =
    let student, reports, _ = runOnWorkers [ DeviceWorker(be.Name, be) ] teacher trace dev kept o hooks ct
    student, reports

/// Converts without held-out calibration text.
let run (be: IBackend) (teacher: Teacher) (trace: TeacherTrace) (kept: int list) (o: ConvertOptions) (hooks: Hooks) (ct: CancellationToken) =
    runWith be teacher trace None kept o hooks ct

/// Converts only `layers` (some of the converted layers) for what their hooks persist: one MPI rank's share of
/// a sharded conversion (Parallel/ShardedConvert.fs). Each layer's result is the one `runOnWorkers` gives it.
let convertLayers (workers: DeviceWorker list) (teacher: Teacher) (trace: TeacherTrace) (dev: TeacherTrace option) (kept: int list)
                  (o: ConvertOptions) (hooks: Hooks) (ct: CancellationToken) (layers: int list) : unit =
    let skeleton = Skeleton.build teacher kept o.Expand o.Seed
    let hooks = if workers.Length > 1 then serialised hooks else hooks
    let jobs = skeleton.Gdn |> Map.toList |> List.filter (fun (i, _) -> List.contains i layers)
    LayerScheduler.run workers jobs (fun w (i, naive) -> convertLayer w.Backend teacher.Config trace dev o hooks ct i naive) ct
    |> LayerScheduler.orRaise (fun (i, _) -> $"layer {i}")
    |> ignore

/// naive or zero-gate without a calibration batch: the same student `runWith` builds, from the teacher's weights
/// alone, with nothing measured (no trace, so no per-layer report).
let runUntraced (teacher: Teacher) (kept: int list) (o: ConvertOptions) : Student =
    if InitStrategy.needsTrace o.Strategy then
        invalidArg (nameof o) $"{InitStrategy.name o.Strategy} calibrates on a teacher trace; use runWith"
    let skeleton = Skeleton.build teacher kept o.Expand o.Seed
    { skeleton with Gdn = skeleton.Gdn |> Map.map (fun _ w -> gateInit o w); Init = InitStrategy.name o.Strategy }
