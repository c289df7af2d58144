/// `taylor-calibrate generate --model M --prompt TEXT [--steps N] [--temperature T]`: continues a prompt
/// (greedy at T = 0) for quick sanity checks; the prompt is encoded as a document (BOS first).
module TaylorCalibrate.Cli.GenerateCommand

open System
open Argu
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Cli.Common

type Args =
    | [<Mandatory>] Model of path: string
    | Prompt of text: string
    | Steps of n: int
    | Temperature of t: float
    | Seed of seed: int
    | Device of device: string
    | Tokenizer of path: string
    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Model _ -> "a Hugging Face model directory or a llama2.c .bin checkpoint"
            | Prompt _ -> "text to continue (default: empty, i.e. just BOS)"
            | Steps _ -> "tokens to generate (default 64)"
            | Temperature _ -> "sampling temperature; 0 = greedy (default 0)"
            | Seed _ -> "random seed for sampling (default 0)"
            | Device _ -> "auto | cpu | vulkan | vulkan:N | vulkan:NAME (default auto)"
            | Tokenizer _ -> "tokenizer file; default: found beside the model"

let run (args: ParseResults<Args>) =
    let path = args.GetResult Model
    let steps = args.GetResult(Steps, 64)
    let temperature = args.GetResult(Temperature, 0.0) |> finite "--temperature"
    if steps <= 0 then usageError $"--steps must be positive, got {steps}"
    if temperature < 0.0 || Double.IsNaN temperature then usageError $"--temperature must be ≥ 0, got {temperature}"
    let model = AnyModel.load path |> orFail
    let c = AnyModel.config model
    let tok = AnyModel.tokenizerFor path model (args.TryGetResult Tokenizer) |> orFail
    let prompt = args.GetResult(Prompt, "")
    let ids = tok.Encode(prompt, true)
    if ids.Length = 0 then usageError "the prompt is empty and the tokenizer has no BOS to start from"
    if ids.Length >= c.Context then usageError $"the prompt has {ids.Length} tokens; the context is {c.Context}"
    use be = openDevice (args.TryGetResult Device)
    use m = AnyModel.decoderOn be model
    let all = Collections.Generic.List<int>(ids)
    let mutable shown = tok.Decode ids
    printf "%s" shown
    Generate.run m ids steps temperature (args.GetResult(Seed, 0)) (fun id ->
        all.Add id
        // Decode the whole text so multi-byte characters split across byte-fallback ids print whole.
        let text = tok.Decode(all.ToArray())
        if text.StartsWith shown then printf "%s" (text.Substring shown.Length)
        shown <- text)
    |> ignore
    printfn ""
    0
