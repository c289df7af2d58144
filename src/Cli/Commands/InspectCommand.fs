/// `taylor-calibrate inspect MODEL`: what a checkpoint is — family, format, dimensions, heads, parameter
/// count, stored dtypes, RoPE, tokenizer and vocabulary — without touching a device.
module TaylorCalibrate.Cli.InspectCommand

open Argu
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Cli.Common

type Args =
    | [<MainCommand; ExactlyOnce>] Model of path: string
    | Tokenizer of path: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "a Hugging Face model directory or a llama2.c .bin checkpoint"
            | Tokenizer _ -> "tokenizer file (tokenizer.json or llama2.c tok*.bin); default: found beside the model"

let run (args: ParseResults<Args>) =
    let path = args.GetResult Model
    // Teachers and student directories alike (Student/AnyModel.fs).
    let model = AnyModel.load path |> orFail
    let c = AnyModel.config model
    let rope =
        let layout = match c.RopeLayout with TaylorCalibrate.Backend.RopeLayout.Adjacent -> "adjacent pairs" | _ -> "rotate-half"
        match c.RopeScaling with
        | Some s -> $"θ={c.RopeTheta:g}, {layout}, llama3 scaling (factor {s.Factor:g}, low {s.LowFreqFactor:g}, high {s.HighFreqFactor:g}, original {s.OriginalMaxPositions})"
        | None -> $"θ={c.RopeTheta:g}, {layout}"
    let tokenizer =
        match AnyModel.tokenizerFor path model (args.TryGetResult Tokenizer) with
        | Ok tok -> tok.Description
        | Error e -> "none: " + InputError.describe e
    let source, format, family, parameters, dtypes =
        match model with
        | AnyModel.TeacherModel t ->
            t.Source.Path, t.Source.Format, ModelFamily.modelType c.Family, TeacherWeights.parameterCount t.Weights, String.concat ", " t.Source.DTypes
        | AnyModel.StudentModel s ->
            path, "student directory (safetensors)", AnyModel.describe model, Student.parameterCount s, "F32"
    let rows =
        [ "path", source
          "format", format
          "family", family
          "layers", string c.Layers
          "hidden size (D)", string c.Dim
          "MLP width", string c.Hidden
          "heads / kv heads", $"{c.Heads} / {c.KvHeads} (group {c.Heads / c.KvHeads})"
          "head dim", string c.HeadDim
          "vocabulary", string c.Vocab
          "context", string c.Context
          "RMSNorm eps", $"{c.NormEps:g}"
          "RoPE", rope
          "lm_head", (if c.TiedEmbeddings then "tied to the embeddings" else "separate")
          "q/k/v bias, o bias, q/k norm", $"{c.QkvBias}, {c.OutputBias}, {c.QkNorm}"
          "parameters", $"{parameters:N0}"
          "stored dtypes", dtypes
          "tokenizer", tokenizer ]
    let width = rows |> List.map (fst >> String.length) |> List.max
    for k, v in rows do printfn "%-*s  %s" width k v
    0
