/// The teacher trace (docs/method.md §5.1, §11d): one fp32 teacher forward over the calibration batch recording,
/// for each layer to convert, the normed input x, the context C (before o_proj), the output Y (after
/// o_proj) and the per-head mean attention distance d̄_h (floored at 0.5) and entropy H_h, from the
/// attention kernel's streamed statistics (no T×T matrix). Large batches are traced in windows of chunks so
/// the teacher's activations stay bounded; only the recorded arrays grow with the calibration size. Windows are
/// independent, so `runStreamedOn` spreads them over the devices of a device list.
module TaylorCalibrate.Pipeline.Stages.TeacherTrace

open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Parallel
open TaylorCalibrate.Pipeline.Stages.Calibration

/// Floor of the mean attention distance (docs/method.md §5.1).
let distanceFloor = 0.5

/// What one converted layer's calibration needs.
type LayerTrace =
    { Layer: int
      /// (B, T, D) RMSNorm_attn of the layer input.
      X: float32[]
      /// (B, T, H, hd) teacher context Σ_j A_ij V_j.
      Context: float32[]
      /// (B, T, D) teacher attention output after o_proj.
      Output: float32[]
      /// (H) mean attention distance, floored at 0.5.
      MeanDistance: float[]
      /// (H) mean attention entropy (nats).
      Entropy: float[] }

/// Traces of every converted layer over one calibration batch.
type TeacherTrace =
    { B: int
      T: int
      Layers: Map<int, LayerTrace> }

/// Per head, mean over b of the kernel's per-(b,h) statistic `which` (0 distance, 1 entropy) from stats (B, H, 2).
let headMeans (B: int) (H: int) (stats: float32[]) (which: int) =
    Array.init H (fun h -> (Array.init B (fun b -> float stats[(b * H + h) * 2 + which]) |> Array.average))

/// Runs the teacher once over the batch and records the given layers.
let run (m: DeviceDecoder) (batch: CalibrationBatch) (layers: int list) : TeacherTrace =
    let r = Decoder.forward m batch.Tokens batch.B batch.T { Decoder.ForwardOptions.none with Trace = Set.ofList layers }
    r.Logits.Dispose()
    let H = m.Config.Heads
    let traces =
        r.Traces |> List.map (fun t ->
            t.Layer,
            { Layer = t.Layer; X = t.Input; Context = t.Context; Output = t.Output
              MeanDistance = headMeans batch.B H t.Stats 0 |> Array.map (max distanceFloor)
              Entropy = headMeans batch.B H t.Stats 1 })
    { B = batch.B; T = batch.T; Layers = Map traces }

/// Default number of T-token chunks per teacher forward when tracing a large batch.
let windowChunks = 4

/// The windows of `runStreamed`: (first chunk, chunk count), at most `window` chunks each, in batch order.
let windows (B: int) (window: int) : (int * int) list =
    if window < 1 then invalidArg "window" $"a window holds at least one chunk, not {window}"
    [ for b0 in 0 .. window .. B - 1 -> b0, min window (B - b0) ]

/// The traced layers of chunks [b0, b0 + nb) of the batch: one teacher forward.
let private traceWindow (m: DeviceDecoder) (batch: CalibrationBatch) (layers: int list) (b0: int, nb: int) =
    let r = Decoder.forward m batch.Tokens[b0 * batch.T .. (b0 + nb) * batch.T - 1] nb batch.T
                            { Decoder.ForwardOptions.none with Trace = Set.ofList layers }
    r.Logits.Dispose()
    nb, r.Traces

/// The trace of the whole batch from its windows' traces, in batch order: arrays concatenated along B; the
/// statistics are per-b means, so the whole-batch mean is the chunk-weighted mean of the windows' means (the
/// floor is applied after).
let private assemble (H: int) (batch: CalibrationBatch) (layers: int list) (parts: (int * Decoder.LayerTrace list) list) =
    let traces =
        layers |> List.map (fun li ->
            let pieces = parts |> List.map (fun (nb, ts) -> nb, ts |> List.find (fun t -> t.Layer = li))
            let stat which =
                Array.init H (fun h ->
                    (pieces |> List.sumBy (fun (nb, t) -> float nb * (headMeans nb H t.Stats which)[h])) / float batch.B)
            li,
            { Layer = li
              X = pieces |> List.map (fun (_, t) -> t.Input) |> Array.concat
              Context = pieces |> List.map (fun (_, t) -> t.Context) |> Array.concat
              Output = pieces |> List.map (fun (_, t) -> t.Output) |> Array.concat
              MeanDistance = stat 0 |> Array.map (max distanceFloor)
              Entropy = stat 1 })
    { B = batch.B; T = batch.T; Layers = Map traces }

/// `run` over windows of at most `window` chunks, concatenated along B (see `assemble`).
let runStreamed (m: DeviceDecoder) (batch: CalibrationBatch) (layers: int list) (window: int) : TeacherTrace =
    if batch.B <= window then run m batch layers
    else assemble m.Config.Heads batch layers (windows batch.B window |> List.map (traceWindow m batch layers))

/// The teacher uploaded once to each device list worker that traces a window (LayerScheduler.PerWorker);
/// dispose to free the copies.
type TeacherCopies(teacher: Teacher) =
    inherit LayerScheduler.PerWorker<DeviceDecoder>(fun w -> new DeviceDecoder(w.Backend, teacher))
    member _.Teacher = teacher

/// `runStreamed` with the windows spread over several devices (docs/architecture.md "Scale-out"): windows are
/// independent (each its own teacher forward over its own chunks), so each worker traces the next window on
/// its own copy of the teacher and the windows are assembled in batch order. A window's trace depends only on
/// the window and the device kind, so two same-kind workers give the one-device trace bit for bit. A window
/// that fails raises LayerScheduler.JobsFailedException naming its chunks and its device.
let runStreamedOn (workers: DeviceWorker list) (copies: TeacherCopies) (batch: CalibrationBatch) (layers: int list) (window: int)
                  (ct: System.Threading.CancellationToken) : TeacherTrace =
    match workers with
    | [ w ] -> runStreamed (copies.Of w) batch layers window
    | _ when batch.B <= window -> run (copies.Of workers.Head) batch layers
    | _ ->
        let parts =
            LayerScheduler.run workers (windows batch.B window) (fun w win -> traceWindow (copies.Of w) batch layers win) ct
            |> LayerScheduler.orRaise (fun (b0, nb) -> $"teacher trace of chunks {b0}..{b0 + nb - 1}")
            |> List.map (fun (_, _, part) -> part)
        assemble copies.Teacher.Config.Heads batch layers parts
