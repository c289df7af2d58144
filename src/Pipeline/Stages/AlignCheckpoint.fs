/// Per-layer persistence of Phase 2 (method.md §5.3: layers are independent), so `convert --resume`
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

/// Persists one aligned layer.
let save (dir: string) (i: int) (w: GdnWeights) (r: Align.AlignResult) =
    let meta =
        Map [ "losses", floats r.Losses; "grad_norms", floats r.GradNorms; "best_loss", r.BestLoss.ToString("R", CultureInfo.InvariantCulture)
              "best_step", string r.BestStep; "seconds", r.Seconds.ToString("R", CultureInfo.InvariantCulture) ]
    let t name (a: float32[]) = name, [| a.Length |], Safetensors.F32 a
    Safetensors.write (layerFile dir i) meta
        [ t "q_proj" w.Wq; t "k_proj" w.Wk; t "v_proj" w.Wv; t "g_proj" w.Wg; t "a_proj" w.Wa; t "b_proj" w.Wb
          t "A_log" w.ALog; t "dt_bias" w.DtBias; t "o_norm" w.ONorm; t "o_proj" w.Wo ]

/// A persisted layer, if present and readable.
let tryLoad (dir: string) (i: int) : (GdnWeights * Align.AlignResult) option =
    let path = layerFile dir i
    if not (File.Exists path) then None else
    match Safetensors.readHeader path with
    | Error _ -> None
    | Ok h ->
        let get n = match Safetensors.readF32 h n with Ok a -> a | Error _ -> [||]
        let w =
            { Wq = get "q_proj"; Wk = get "k_proj"; Wv = get "v_proj"; Wg = get "g_proj"; Wa = get "a_proj"; Wb = get "b_proj"
              ALog = get "A_log"; DtBias = get "dt_bias"; ONorm = get "o_norm"; Wo = get "o_proj" }
        let m k = h.Metadata.TryFind k |> Option.defaultValue ""
        if w.Wq.Length = 0 || w.Wo.Length = 0 then None
        else
            Some(w,
                 { Layer = i; Losses = parseFloats (m "losses"); GradNorms = parseFloats (m "grad_norms")
                   BestLoss = Double.Parse(m "best_loss", CultureInfo.InvariantCulture); BestStep = int (m "best_step")
                   Seconds = Double.Parse(m "seconds", CultureInfo.InvariantCulture) })

/// Writes the run settings (a canonical text) for a later --resume to compare.
let writeRun (dir: string) (settings: string) = AtomicFile.writeText (runFile dir) settings

/// The settings a previous run recorded, if any.
let readRun (dir: string) = if File.Exists(runFile dir) then Some(File.ReadAllText(runFile dir)) else None
