/// Per-layer persistence of Phase 2 (docs/method.md §5.3: layers are independent), so `convert --resume`
/// continues after the last finished layer: DIR/align/layer-{i}.safetensors holds the aligned GDN weights
/// and its metadata the loss curve; DIR/align/run.json records the settings a resume must match.
/// Every file is written atomically.
module TaylorCalibrate.Pipeline.Stages.AlignCheckpoint

open System
open System.IO
open System.Globalization
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Student

let private layerFile (dir: string) (i: int) = Path.Combine(dir, "align", $"layer-{i}.safetensors")
/// The settings file of a run.
let runFile (dir: string) = Path.Combine(dir, "align", "run.json")

let private floats (a: float[]) = a |> Array.map (fun v -> v.ToString("R", CultureInfo.InvariantCulture)) |> String.concat ","
let private parseFloats (s: string) =
    if String.IsNullOrEmpty s then [||] else s.Split(',') |> Array.map (fun v -> Double.Parse(v, CultureInfo.InvariantCulture))

/// The tensors of a layer in their stored order.
let private tensorsOf (w: GdnWeights) =
    [ "q_proj", w.Wq; "k_proj", w.Wk; "v_proj", w.Wv; "g_proj", w.Wg; "a_proj", w.Wa; "b_proj", w.Wb
      "A_log", w.ALog; "dt_bias", w.DtBias; "o_norm", w.ONorm; "o_proj", w.Wo ]

/// SHA-256 of the tensors' bytes in stored order: a resume must not trust flipped bytes.
let private checksum (w: GdnWeights) =
    use h = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256)
    for _, a in tensorsOf w do h.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(ReadOnlySpan a))
    System.Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant()

/// Persists one aligned layer, with the checksum of its tensors.
let save (dir: string) (i: int) (w: GdnWeights) (r: Align.AlignResult) =
    let meta =
        Map [ "losses", floats r.Losses; "grad_norms", floats r.GradNorms; "best_loss", r.BestLoss.ToString("R", CultureInfo.InvariantCulture)
              "best_step", string r.BestStep; "seconds", r.Seconds.ToString("R", CultureInfo.InvariantCulture)
              "sha256", checksum w ]
    Safetensors.write (layerFile dir i) meta [ for name, a in tensorsOf w -> name, [| a.Length |], Safetensors.F32 a ]

/// What a resume finds for one layer.
type Saved =
    | Restored of GdnWeights * Align.AlignResult
    | NotSaved
    /// The file reads, but its tensors fail the checksum (or it has none): flipped bytes, an edited file.
    | FailsChecksum of path: string
    /// The file is there but cannot be read: a damaged header, missing tensors, unreadable metadata.
    | Unreadable of path: string * problem: string

/// The persisted layer `i`, verified against its checksum.
let load (dir: string) (i: int) : Saved =
    let path = layerFile dir i
    if not (File.Exists path) then NotSaved else
    match Safetensors.readHeader path with
    | Error e -> Unreadable(path, TaylorCalibrate.Pipeline.InputError.describe e)
    | Ok h ->
        let read = tensorsOf { Wq = [||]; Wk = [||]; Wv = [||]; Wg = [||]; Wa = [||]; Wb = [||]; ALog = [||]; DtBias = [||]; ONorm = [||]; Wo = [||] }
                   |> List.map (fun (n, _) -> n, Safetensors.readF32 h n)
        match read |> List.tryPick (fun (_, r) -> match r with Error e -> Some e | Ok _ -> None) with
        | Some e -> Unreadable(path, TaylorCalibrate.Pipeline.InputError.describe e)
        | None ->
        let get n = read |> List.pick (fun (m, r) -> match r with Ok a when m = n -> Some a | _ -> None)
        let w =
            { Wq = get "q_proj"; Wk = get "k_proj"; Wv = get "v_proj"; Wg = get "g_proj"; Wa = get "a_proj"; Wb = get "b_proj"
              ALog = get "A_log"; DtBias = get "dt_bias"; ONorm = get "o_norm"; Wo = get "o_proj" }
        let m k = h.Metadata.TryFind k |> Option.defaultValue ""
        match h.Metadata.TryFind "sha256" with
        | Some sum when sum = checksum w ->
            try
                Restored(w,
                         { Layer = i; Losses = parseFloats (m "losses"); GradNorms = parseFloats (m "grad_norms")
                           BestLoss = Double.Parse(m "best_loss", CultureInfo.InvariantCulture); BestStep = int (m "best_step")
                           Seconds = Double.Parse(m "seconds", CultureInfo.InvariantCulture) })
            with :? FormatException -> Unreadable(path, "its metadata (losses, best_loss, best_step, seconds) is not readable")
        | _ -> FailsChecksum path

/// A persisted layer, if present and verified (unusable files read as absent; see `load` to tell them apart).
let tryLoad (dir: string) (i: int) : (GdnWeights * Align.AlignResult) option =
    match load dir i with Restored(w, r) -> Some(w, r) | _ -> None

/// What a resume of the converted layers `layers` restores: the verified layers, and a warning for each
/// file that is redone. A file failing its checksum is redone. An unreadable file is redone only when no
/// later layer was restored (it may be the one being written when the run stopped); below a restored layer
/// something else damaged it, which is an error naming the file.
let resumeFrom (dir: string) (layers: int list) : Result<Map<int, GdnWeights * Align.AlignResult> * string list, string> =
    let found = layers |> List.map (fun i -> i, load dir i)
    let lastRestored = found |> List.choose (fun (i, s) -> match s with Restored _ -> Some i | _ -> None) |> List.fold max -1
    let damaged = found |> List.tryPick (fun (i, s) -> match s with Unreadable(p, why) when i < lastRestored -> Some $"{p}: {why}" | _ -> None)
    match damaged with
    | Some e -> Error $"{e}; delete it to redo that layer, or start afresh"
    | None ->
        let restored = found |> List.choose (fun (i, s) -> match s with Restored(w, r) -> Some(i, (w, r)) | _ -> None) |> Map.ofList
        let warnings =
            found |> List.choose (fun (i, s) ->
                match s with
                | FailsChecksum p -> Some $"{p}: its tensors fail the checksum (sha256), the file was changed or damaged; layer {i} is aligned again"
                | Unreadable(p, why) -> Some $"{p}: {why} (the layer being written when the run stopped?); layer {i} is aligned again"
                | _ -> None)
        Ok(restored, warnings)

/// Writes the run settings (a canonical text) for a later --resume to compare.
let writeRun (dir: string) (settings: string) = AtomicFile.writeText (runFile dir) settings

/// The settings a previous run recorded, if any.
let readRun (dir: string) = if File.Exists(runFile dir) then Some(File.ReadAllText(runFile dir)) else None
