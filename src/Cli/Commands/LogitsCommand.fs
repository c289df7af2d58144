/// `taylor-calibrate logits --model M (--ids 1,403,407 | --text TEXT) --out FILE.safetensors`: one forward
/// pass, writing `logits` [T, vocab] (float32) and `ids` [T] (int32), to cross-check the forward against
/// another framework. With --ids no tokenizer is needed.
module TaylorCalibrate.Cli.LogitsCommand

open System
open Argu
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Cli.Common

type Args =
    | [<Mandatory>] Model of path: string
    | Ids of ids: string
    | Text of text: string
    | [<Mandatory>] Out of path: string
    | Device of device: string
    | Tokenizer of path: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "a Hugging Face model directory or a llama2.c .bin checkpoint"
            | Ids _ -> "comma-separated token ids, e.g. 1,403,407"
            | Text _ -> "text, encoded as a document (BOS first) with the model's tokenizer"
            | Out _ -> "output .safetensors file (written atomically)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto)"
            | Tokenizer _ -> "tokenizer file for --text; default: found beside the model"

let private parseIds (s: string) =
    s.Split(',', StringSplitOptions.TrimEntries ||| StringSplitOptions.RemoveEmptyEntries)
    |> Array.map (fun p ->
        match Int32.TryParse p with
        | true, v -> v
        | _ -> usageError $"--ids: '{p}' is not an integer")

let run (args: ParseResults<Args>) =
    let path = args.GetResult Model
    let model = AnyModel.load path |> orFail
    let c = AnyModel.config model
    let ids =
        match args.TryGetResult Ids, args.TryGetResult Text with
        | Some s, None -> parseIds s
        | None, Some text ->
            let tok = AnyModel.tokenizerFor path model (args.TryGetResult Tokenizer) |> orFail
            tok.Encode(text, true)
        | _ -> usageError "give exactly one of --ids and --text"
    if ids.Length = 0 then usageError "no tokens to run"
    if ids.Length > c.Context then usageError $"{ids.Length} tokens exceed the model's context {c.Context}"
    match ids |> Array.tryFind (fun id -> id < 0 || id >= c.Vocab) with
    | Some id -> usageError $"token id {id} is outside the vocabulary [0, {c.Vocab})"
    | None -> ()
    use be = openDevice (args.TryGetResult Device)
    use m = AnyModel.decoderOn be model
    let logits = Decoder.logits m ids 1 ids.Length
    let out = args.GetResult Out |> nonEmptyPath "--out"
    Safetensors.write out Map.empty
        [ "logits", [| ids.Length; c.Vocab |], Safetensors.F32 logits
          "ids", [| ids.Length |], Safetensors.I32 ids ]
    printfn "wrote %s: logits [%d, %d], ids [%d] (device %s)" out ids.Length c.Vocab ids.Length be.Name
    0
