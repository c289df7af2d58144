/// Retained-layer selection (docs/method.md §6): which k of the teacher's L layers keep softmax attention.
///   Uniform: ⌊i·L/k⌋, i = 0..k−1 (LayerPolicy), no measurement.
///   AR:      for each layer ℓ, the teacher with ℓ's attention sublayer output taken as 0 (the residual kept)
///            is evaluated with the chunked-perplexity protocol (docs/method.md §8); ΔPPL_ℓ = PPL_ℓ − PPL_teacher;
///            the k largest ΔPPL are kept.
///   GA-S2:   for each layer ℓ, the hybrid that keeps only ℓ, initialised with one strategy (docs/method.md §5), is
///            evaluated zero-shot; the k lowest perplexities are kept.
/// Ties go to the lower layer index. The result names the teacher it was made for (Model/TeacherIdentity.fs)
/// and keeps every score; Stages/LayerSelectionFile.fs writes and reads it.
module TaylorCalibrate.Pipeline.Stages.LayerSelection

open System
open System.Diagnostics
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Parallel
open TaylorCalibrate.Pipeline.Student

/// The policy a selection was made with (what the result records).
[<RequireQualifiedAccess>]
type Policy =
    | Uniform
    | Ar
    /// GA-S2 with the init strategy of its one-layer hybrids: the chosen set depends on it.
    | GaS2 of Convert.InitStrategy

module Policy =
    let name = function Policy.Uniform -> "uniform" | Policy.Ar -> "ar" | Policy.GaS2 _ -> "ga-s2"
    let names = [ "uniform"; "ar"; "ga-s2" ]
    let init = function Policy.GaS2 s -> Some s | _ -> None

    /// The policy of `name`; `init` belongs to GA-S2 only (default taylor-calibrate there).
    let parse (name: string) (init: Convert.InitStrategy option) : Result<Policy, InputError> =
        match name, init with
        | "uniform", None -> Ok Policy.Uniform
        | "ar", None -> Ok Policy.Ar
        | ("uniform" | "ar"), Some _ -> Error(InvalidOption("--init", $"applies to --policy ga-s2 only, not {name}"))
        | "ga-s2", s -> Ok(Policy.GaS2(defaultArg s Convert.InitStrategy.TaylorCalibrate))
        | _ ->
            let known = String.Join(", ", names)
            Error(InvalidOption("--policy", $"unknown policy '{name}'; expected one of {known}"))

    /// Whether the policy's init needs a calibration batch (a teacher trace): Phase 1 or Phase 2 does.
    let needsCalibration = function
        | Policy.GaS2 s -> Convert.InitStrategy.usesPhase1 s || Convert.InitStrategy.aligns s
        | _ -> false

/// How many layers to keep: a count, or a fraction f of L (k = max(1, round(f·L)), docs/method.md §6).
type KeepCount =
    | Count of int
    | Fraction of float

module KeepCount =
    /// k for a teacher of `layers` layers: a count must lie in 1..L, a fraction in (0, 1].
    let resolve (layers: int) (keep: KeepCount) : Result<int, InputError> =
        match keep with
        | Count k when k < 1 || k > layers -> Error(InvalidOption("--keep", $"{k} must lie in 1..{layers} (the teacher has {layers} layers)"))
        | Count k -> Ok k
        | Fraction f when Double.IsNaN f || f <= 0.0 || f > 1.0 -> Error(InvalidOption("--keep-fraction", $"{f} must lie in (0, 1]"))
        | Fraction f -> Ok(LayerPolicy.keptCount layers f)

/// The held-out text the measured policies evaluate on.
type EvalInput =
    { Source: string
      Set: Perplexity.EvalSet }

/// How GA-S2 initialises its one-layer hybrids. Build it with GaS2Setup.create, which refuses a calibrated
/// init without a calibration batch.
type GaS2Setup =
    private
        { options: Convert.ConvertOptions
          calibration: Calibration.CalibrationBatch option }

    /// The conversion options; Options.Strategy is the init.
    member s.Options = s.options
    /// The calibration batch (absent only for inits that need none).
    member s.Calibration = s.calibration

module GaS2Setup =
    let create (options: Convert.ConvertOptions) (calibration: Calibration.CalibrationBatch option) : Result<GaS2Setup, InputError> =
        if calibration.IsNone && Policy.needsCalibration (Policy.GaS2 options.Strategy) then
            Error(InvalidOption("--calib-text", $"--init {Convert.InitStrategy.name options.Strategy} calibrates on a teacher trace; give a calibration text disjoint from --eval-text"))
        else Ok { options = options; calibration = calibration }

/// What to run: the measured policies carry what they measure with.
[<RequireQualifiedAccess>]
type Plan =
    | Uniform
    | Ar of EvalInput
    | GaS2 of EvalInput * GaS2Setup

module Plan =
    let policy = function
        | Plan.Uniform -> Policy.Uniform
        | Plan.Ar _ -> Policy.Ar
        | Plan.GaS2(_, s) -> Policy.GaS2 s.Options.Strategy

/// The inputs of a selection.
type SelectionInput =
    { Teacher: Teacher
      TeacherPath: string
      /// Layers to keep, 1..L (KeepCount.resolve).
      K: int
      Plan: Plan }

/// One layer's measurement.
type LayerScore =
    { Layer: int
      /// AR: the teacher without ℓ's attention; GA-S2: the hybrid keeping only ℓ.
      Perplexity: float
      /// The ranking score: AR ΔPPL (largest kept), GA-S2 the perplexity (smallest kept).
      Score: float }

/// Where the calibration batch of a GA-S2 init came from.
type CalibrationInfo =
    { Text: string
      B: int
      T: int }

/// What the measured policies measured.
type Measurement =
    { EvalText: string
      Window: int
      Windows: int
      TeacherPerplexity: float
      /// Every layer's score, by layer index.
      Scores: LayerScore list
      Calibration: CalibrationInfo option }

/// The result of a selection.
type Selection =
    { Teacher: TeacherIdentity.TeacherIdentity
      Policy: Policy
      /// The teacher's layer count L.
      Layers: int
      K: int
      /// The kept layers, ascending.
      Kept: int list
      /// None for Uniform.
      Measured: Measurement option
      Seconds: float }

/// Progress in units of one evaluation or one layer initialisation (fractional within an evaluation).
type SelectionProgress =
    { Done: float
      Total: int
      Current: string }

/// The k layers with the best scores, ascending. AR keeps the largest score, GA-S2 the smallest; equal
/// scores go to the lower index. A NaN score is refused: it would order arbitrarily.
let choose (k: int) (largestFirst: bool) (scores: LayerScore list) : int list =
    match scores |> List.tryFind (fun s -> Double.IsNaN s.Score) with
    | Some s -> invalidOp $"layer {s.Layer}: its score is NaN (perplexity {s.Perplexity}); the ranking would be arbitrary"
    | None -> ()
    let key s = if largestFirst then -s.Score else s.Score
    scores
    |> List.sortWith (fun a b -> match compare (key a) (key b) with 0 -> compare a.Layer b.Layer | c -> c)
    |> List.truncate k
    |> List.map (fun s -> s.Layer)
    |> List.sort

/// Every call into the model code (teacher forward with skipped attention, conversion, hybrid forward,
/// evaluation) is made here, so the stage follows the decoder wherever it lives.
module Models =
    let private perplexity (lm: Perplexity.LogitsModel) (set: Perplexity.EvalSet) (onWindows: float -> unit) (ct: CancellationToken) =
        let progress =
            { new IProgress<Perplexity.Progress> with
                member _.Report p = onWindows (float p.WindowsDone / float p.Windows) }
        let r = Perplexity.evaluateModel lm None set (Some progress) ct
        r.Perplexity

    /// The teacher uploaded to `be`.
    let upload (be: IBackend) (t: Teacher) = new DeviceDecoder(be, t)

    /// Perplexity of the teacher with the attention sublayers of `skip` removed (outputs 0, residual kept).
    let teacherPerplexity (dt: DeviceDecoder) (skip: Set<int>) set onWindows ct =
        let lm : Perplexity.LogitsModel =
            { Backend = dt.Backend; Vocab = dt.Config.Vocab
              Logits = fun ids B T -> (Decoder.forward dt ids B T { Decoder.ForwardOptions.none with SkipAttention = skip }).Logits }
        perplexity lm set onWindows ct

    /// The student with every layer converted by the setup's init. A layer's conversion depends only on the
    /// teacher, the calibration batch, the seed and the layer index (teacher-forced, fresh draws a function of
    /// (seed, layer)), never on which other layers are kept: so the hybrid keeping only ℓ is this student
    /// with ℓ's softmax attention restored (keepOnly), and GA-S2 costs one init of L layers, not L inits.
    /// The layers are converted over `workers` (Convert.runOnWorkers: the student of one device of their kind);
    /// the trace runs on `dt`.
    let convertAllOn (workers: DeviceWorker list) (dt: DeviceDecoder) (t: Teacher) (setup: GaS2Setup) (layerStarted: int -> unit) (ct: CancellationToken) : Student =
        let o = setup.Options
        let all = [ 0 .. t.Config.Layers - 1 ]
        match setup.Calibration with
        | Some batch ->
            let trace = TeacherTrace.run dt batch all
            let hooks = { Convert.Hooks.none with LayerStarted = layerStarted }
            let student, _, _ = Convert.runOnWorkers workers t trace None [] o hooks ct
            student
        | None ->
            // Only the trace-free inits reach here (GaS2Setup.create): naive, and zero-gate = naive with W_g = 0.
            let s = Skeleton.build t [] o.Expand o.Seed
            all |> List.iter layerStarted
            let gdn =
                if o.Strategy = Convert.InitStrategy.ZeroGate then s.Gdn |> Map.map (fun _ w -> { w with Wg = Array.zeroCreate w.Wg.Length })
                else s.Gdn
            { s with Gdn = gdn; Init = Convert.InitStrategy.name o.Strategy }

    /// convertAllOn one device.
    let convertAll (be: IBackend) (dt: DeviceDecoder) (t: Teacher) (setup: GaS2Setup) (layerStarted: int -> unit) (ct: CancellationToken) : Student =
        convertAllOn [ DeviceWorker(be.Name, be) ] dt t setup layerStarted ct

    /// The hybrid keeping only `layer` softmax, from a student with every layer converted.
    let keepOnly (all: Student) (layer: int) : Student =
        { all with Kept = [ layer ]; Gdn = all.Gdn.Remove layer }

    /// Zero-shot perplexity of a student.
    let studentPerplexity (be: IBackend) (s: Student) set onWindows ct =
        use m = new DeviceDecoder(be, s)
        perplexity (Perplexity.decoderModel m) set onWindows ct

let private checkPerplexity (what: string) (ppl: float) =
    if Double.IsNaN ppl then invalidOp $"{what}: the perplexity is NaN; the forward pass produced non-finite logits"
    ppl

/// Runs the selection with its per-layer measurements spread over `workers` (docs/architecture.md
/// "Scale-out"): AR's L evaluations of the teacher without one attention sublayer, and GA-S2's conversion and
/// its L one-layer hybrids' evaluations, each on the next free device (LayerScheduler); the teacher's own
/// perplexity and GA-S2's trace run on the first. Each measurement depends only on the layer and the device's
/// kind, so two same-kind workers give the one-device scores bit for bit. A layer whose measurement fails is
/// reported with its device (LayerScheduler.JobsFailedException) after the others finished. Cancellation
/// stops between evaluation batches.
let runOn (workers: DeviceWorker list) (input: SelectionInput) (progress: IProgress<SelectionProgress> option) (ct: CancellationToken) : Selection =
    if workers.IsEmpty then invalidArg "workers" "at least one device is needed"
    let t = input.Teacher
    let L = t.Config.Layers
    if input.K < 1 || input.K > L then invalidArg "input" $"k = {input.K} must lie in 1..{L}"
    let watch = Stopwatch.StartNew()
    let identity = TeacherIdentity.ofTeacher input.TeacherPath t
    let total =
        match input.Plan with
        | Plan.Uniform -> 0
        | Plan.Ar _ -> L + 1
        | Plan.GaS2 _ -> 2 * L + 1
    // Progress may come from several worker threads: the count of finished units plus the fractions of the
    // evaluations under way, under one lock.
    let gate = obj ()
    let mutable finished = 0
    let running = Array.zeroCreate<float> L
    let report (fraction: float) (what: string) =
        progress |> Option.iter (fun p -> p.Report { Done = float finished + fraction; Total = total; Current = what })
    let step (what: string) (f: (float -> unit) -> 'a) : 'a =
        report 0.0 what
        let r = f (fun x -> report x what)
        finished <- finished + 1
        report 0.0 what
        r
    /// Layer i's evaluation, one of L that may run at once.
    let layerStep (i: int) (what: string) (f: (float -> unit) -> 'a) : 'a =
        let reportNow () = report (Array.sum running) what
        lock gate reportNow
        let r = f (fun x -> lock gate (fun () -> running[i] <- x; reportNow ()))
        lock gate (fun () -> running[i] <- 0.0; finished <- finished + 1; reportNow ())
        r
    let measured (eval: EvalInput) (calibration: CalibrationInfo option) (scores: LayerScore list) teacherPpl =
        { EvalText = eval.Source; Window = eval.Set.Window; Windows = eval.Set.Windows; TeacherPerplexity = teacherPpl
          Scores = scores; Calibration = calibration }
    let perLayer (work: DeviceWorker -> int -> LayerScore) : LayerScore list =
        LayerScheduler.run workers [ 0 .. L - 1 ] work ct
        |> LayerScheduler.orRaise (fun i -> $"layer {i}")
        |> List.map (fun (_, _, score) -> score)
    let kept, measurement =
        match input.Plan with
        | Plan.Uniform -> LayerPolicy.uniformCount L input.K, None
        | Plan.Ar eval ->
            use copies = new TeacherTrace.TeacherCopies(t)
            let teacherPpl =
                step "teacher" (fun on -> Models.teacherPerplexity (copies.Of workers.Head) Set.empty eval.Set on ct)
                |> checkPerplexity "teacher"
            let scores =
                perLayer (fun w i ->
                    let ppl =
                        layerStep i $"layer {i} without attention" (fun on -> Models.teacherPerplexity (copies.Of w) (set [ i ]) eval.Set on ct)
                        |> checkPerplexity $"teacher without layer {i}'s attention"
                    { Layer = i; Perplexity = ppl; Score = ppl - teacherPpl })
            choose input.K true scores, Some(measured eval None scores teacherPpl)
        | Plan.GaS2(eval, setup) ->
            use dt = Models.upload workers.Head.Backend t
            let teacherPpl =
                step "teacher" (fun on -> Models.teacherPerplexity dt Set.empty eval.Set on ct) |> checkPerplexity "teacher"
            let init = Convert.InitStrategy.name setup.Options.Strategy
            // Layers start in order on one device; on several, each start counts one unit (under the lock
            // Convert.runOnWorkers holds around its hooks).
            let layerStarted i =
                if i > 0 then finished <- finished + 1
                report 0.0 $"{init} init of layer {i}"
            let all = Models.convertAllOn workers dt t setup layerStarted ct
            finished <- 1 + L
            let scores =
                perLayer (fun w i ->
                    let ppl =
                        layerStep i $"hybrid keeping layer {i}" (fun on -> Models.studentPerplexity w.Backend (Models.keepOnly all i) eval.Set on ct)
                        |> checkPerplexity $"hybrid keeping only layer {i}"
                    { Layer = i; Perplexity = ppl; Score = ppl })
            let calibration = setup.Calibration |> Option.map (fun b -> { Text = b.Source; B = b.B; T = b.T })
            choose input.K false scores, Some(measured eval calibration scores teacherPpl)
    { Teacher = identity; Policy = Plan.policy input.Plan; Layers = L; K = input.K; Kept = kept; Measured = measurement
      Seconds = watch.Elapsed.TotalSeconds }

/// Runs the selection on `be` (see runOn).
let run (be: IBackend) (input: SelectionInput) (progress: IProgress<SelectionProgress> option) (ct: CancellationToken) : Selection =
    runOn [ DeviceWorker(be.Name, be) ] input progress ct
