/// report.json of a conversion: per layer and head the mean distance, entropy, target decay,
/// β target, σ, α, Taylor errors, alignment loss curve, final MSE and cosine; plus timings and provenance.
/// Non-finite numbers (a first-order Taylor denominator of 0) are written as null.
module TaylorCalibrate.Pipeline.Report.ConvertReport

open System
open System.Text.Json
open System.Text.Json.Nodes
open TaylorCalibrate.Pipeline.Stages

/// Everything the report shows about one layer.
type LayerEntry =
    { Convert: Convert.LayerReport
      Taylor: TaylorDiagnostic.TaylorErrors option }

/// The whole report.
type Report =
    { Teacher: string
      Init: string
      Kept: int list
      GqaExpand: string
      Seed: int
      Steps: int
      /// None for naive and zero-gate given no calibration text: nothing was traced, so Layers is empty.
      Calibration: Calibration.CalibrationBatch option
      Layers: LayerEntry list
      /// (stage, seconds) in order.
      Timings: (string * float) list
      Device: string }

let private num (x: float) : JsonNode = if Double.IsFinite x then JsonValue.Create x else null
let private arr (a: float[]) = JsonArray(a |> Array.map num)
let private ints (a: int seq) = JsonArray(a |> Seq.map (fun i -> JsonValue.Create i :> JsonNode) |> Array.ofSeq)

/// The JSON text.
let toJson (r: Report) : string =
    let o = JsonObject()
    o["teacher"] <- JsonValue.Create r.Teacher
    o["init"] <- JsonValue.Create r.Init
    o["keep_full_attention_layers"] <- ints r.Kept
    o["gqa_expand"] <- JsonValue.Create r.GqaExpand
    o["seed"] <- JsonValue.Create r.Seed
    o["steps"] <- JsonValue.Create r.Steps
    o["device"] <- JsonValue.Create r.Device
    match r.Calibration with
    | None -> o["calibration"] <- null
    | Some b ->
        let cal = JsonObject()
        cal["source"] <- JsonValue.Create b.Source
        cal["batch"] <- JsonValue.Create b.B
        cal["length"] <- JsonValue.Create b.T
        cal["documents"] <- JsonValue.Create b.Documents
        cal["eval_source"] <- (match b.EvalSource with Some s -> JsonValue.Create s :> JsonNode | None -> null)
        cal["overlapping_documents"] <- JsonValue.Create b.OverlappingDocuments
        // False when no evaluation text was given: the overlap is then unknown, not zero.
        cal["overlap_checked"] <- JsonValue.Create b.EvalSource.IsSome
        o["calibration"] <- cal
    let layers = JsonArray()
    for e in r.Layers do
        let l = JsonObject()
        let c = e.Convert
        l["layer"] <- JsonValue.Create c.Layer
        l["mean_distance"] <- arr c.MeanDistance
        l["entropy"] <- arr c.Entropy
        match c.Phase1 with
        | Some p ->
            l["target_decay"] <- arr p.TargetDecay
            l["concentration"] <- arr p.Concentration
            l["beta_target"] <- arr p.BetaTarget
            l["sigma_raw"] <- arr p.SigmaRaw
            l["sigma"] <- arr p.Sigma
            l["alpha"] <- num p.Alpha
        | None -> ()
        match e.Taylor with
        | Some t ->
            l["taylor_error_first_order"] <- arr t.FirstOrder
            l["taylor_error_second_order"] <- arr t.SecondOrder
            l["taylor_nonpositive_first_order_denominators"] <- ints t.NonPositiveFirstOrder
        | None -> ()
        match c.Alignment with
        | Some a ->
            l["alignment_losses"] <- arr a.Losses
            l["alignment_grad_norms"] <- arr a.GradNorms
            l["alignment_best_loss"] <- num a.BestLoss
            l["alignment_best_step"] <- JsonValue.Create a.BestStep
            l["alignment_seconds"] <- num a.Seconds
        | None -> ()
        l["final_mse"] <- num c.Fit.Mse
        // Two cosines, named: the flattened one and the reference's mean per-token one.
        l["final_cosine_flattened"] <- num c.Fit.Cosine
        l["final_cosine_mean_per_token"] <- num c.Fit.MeanTokenCosine
        l["seconds"] <- num c.Seconds
        layers.Add l
    o["layers"] <- layers
    let t = JsonObject()
    for name, s in r.Timings do t[name] <- num s
    o["timings_s"] <- t
    o.ToJsonString(JsonSerializerOptions(WriteIndented = true))
