/// The zero-shot ablation of one teacher and one kept-layer set (docs/method.md §9): the held-out PPL of the
/// student each init strategy builds (Convert), before any distillation. The published strategies calibrate
/// on 4 chunks of min(256, context) tokens of the calibration text; calibrate-plus on a larger fit part and
/// a held-out dev part of whole trailing documents of the same text (Calibration.buildSplit).
module TaylorCalibrate.Pipeline.Stages.ZeroShotAblation

open System.Diagnostics
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Student
open TaylorCalibrate.Pipeline.Text

/// The calibration sizes and steps (the defaults are the method's and calibrate-plus's own).
type AblationOptions =
    { AlignSteps: int
      /// calibrate-plus: fit tokens (a multiple of the chunk length), held-out dev tokens, alignment steps.
      PlusFitTokens: int
      PlusDevTokens: int
      PlusSteps: int
      Seed: int }

module AblationOptions =
    let defaults = { AlignSteps = 300; PlusFitTokens = 16384; PlusDevTokens = 4096; PlusSteps = 600; Seed = 0 }

/// One strategy's zero-shot result.
type Row =
    { Strategy: Convert.InitStrategy
      Perplexity: float
      /// Conversion wall time (the teacher trace excluded).
      Seconds: float }

/// Zero-shot PPL of each of `strategies` on `set`, converting `teacher` with `kept` softmax layers.
let run (be: IBackend) (teacher: Teacher) (tok: ITokenizer) (calibSource: string) (calibDocs: string list)
        (eval: string * string list) (set: Perplexity.EvalSet) (kept: int list) (o: AblationOptions)
        (strategies: Convert.InitStrategy list) (log: string -> unit) (ct: CancellationToken) : Result<Row list, InputError> =
    let c = teacher.Config
    let length = min 256 c.Context
    let published = { Calibration.CalibrationOptions.defaults with Length = length }
    let plusOpts = { published with Batch = max 1 (o.PlusFitTokens / length) }
    let converted = [ 0 .. c.Layers - 1 ] |> List.except kept
    Calibration.build published tok calibSource calibDocs (Some eval)
    |> Result.bind (fun batch ->
        (if List.contains Convert.InitStrategy.CalibratePlus strategies then
             Calibration.buildSplit plusOpts o.PlusDevTokens tok calibSource calibDocs (Some eval) |> Result.map Some
         else Ok None)
        |> Result.map (fun plus ->
            use dt = new DeviceDecoder(be, teacher)
            let trace = lazy (TeacherTrace.runStreamed dt batch converted TeacherTrace.windowChunks)
            let plusTraces =
                lazy (let s = Option.get plus
                      TeacherTrace.runStreamed dt s.Fit converted TeacherTrace.windowChunks,
                      s.Dev |> Option.map (fun d -> TeacherTrace.runStreamed dt d converted TeacherTrace.windowChunks))
            [ for strategy in strategies do
                let name = Convert.InitStrategy.name strategy
                log $"zero-shot ablation: {name}"
                let fit, dev =
                    if strategy = Convert.InitStrategy.CalibratePlus then plusTraces.Force() else trace.Force(), None
                let opts = Convert.ConvertOptions.defaults strategy
                let opts = { opts with Seed = o.Seed; Align = { opts.Align with Steps = o.AlignSteps }; Plus = { opts.Plus with Steps = o.PlusSteps } }
                let w = Stopwatch.StartNew()
                let student, _ = Convert.runWith be teacher fit dev kept opts Convert.Hooks.none ct
                let secs = w.Elapsed.TotalSeconds
                use m = new DeviceDecoder(be, student)
                let ppl = (Perplexity.evaluate m None set None ct).Perplexity
                log $"zero-shot ablation: {name} PPL {ppl:F3} (convert {secs:F1} s)"
                yield { Strategy = strategy; Perplexity = ppl; Seconds = secs } ]))
