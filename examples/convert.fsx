// A conversion composed from the Pipeline's stages, as an F# workflow embeds them (docs/architecture.md §3.2):
// calibration batch -> teacher trace -> convert (naive, then taylor-calibrate) -> zero-shot perplexity.
// Build first (`dotnet fsi build.fsx`, or `dotnet build src/Cli -c Release`), then
//   dotnet fsi examples/convert.fsx [TEACHER [CALIB_TEXT [EVAL_TEXT]]]
// Defaults, all in a fresh clone: the committed models/demo-teacher (trained on State-of-the-Union addresses),
// calibrated on examples/text/calib.txt and evaluated on examples/text/eval.txt (short texts of our own in the
// style of those addresses, sharing no document). `ConvertJob.convert` runs the same sequence with the
// CLI's checks, resume and report.
#I "../src/Cli/bin/Release/net10.0"
#r "TaylorCalibrate.Backend.dll"
#r "TaylorCalibrate.Pipeline.dll"

open System.IO
open System.Threading
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Stages
open TaylorCalibrate.Pipeline.Text

let arg i fallback = fsi.CommandLineArgs |> Array.tryItem (i + 1) |> Option.defaultValue (Path.Combine(__SOURCE_DIRECTORY__, "..", fallback))
let teacherPath, calibText, evalText = arg 0 "models/demo-teacher", arg 1 "examples/text/calib.txt", arg 2 "examples/text/eval.txt"
let ok = function Ok v -> v | Error e -> failwith (InputError.describe e)

let teacher = ModelFiles.loadTeacher teacherPath |> ok
let tokenizer = ModelFiles.tokenizerFor teacherPath teacher.Config None |> ok
let kept, converted = [ 0 ], [ 1 .. teacher.Config.Layers - 1 ] // layer 0 keeps softmax attention
let evalDocs = Corpus.readDocuments evalText |> ok
// 4 × 256 tokens of calibration text, refused if it shares a document with the evaluation text.
let batch = Calibration.build Calibration.CalibrationOptions.defaults tokenizer calibText (Corpus.readDocuments calibText |> ok) (Some(evalText, evalDocs)) |> ok
let evalSet = Perplexity.prepare evalText teacher.Config (Corpus.tokenStreamUpTo tokenizer (Some 4096) evalDocs) None (Some 4096) |> ok
let perplexity (m: DeviceDecoder) = (Perplexity.evaluate m None evalSet None CancellationToken.None).Perplexity

let be = Devices.Open "cpu" // or "auto": the best GPU, else the CPU
let teacherOnDevice = new DeviceDecoder(be, teacher)
let trace = TeacherTrace.run teacherOnDevice batch converted // one fp32 forward recording the converted layers
printfn "teacher: PPL %.2f on %d tokens of %s" (perplexity teacherOnDevice) (evalSet.Windows * evalSet.Window) (Path.GetFileName evalText)
for strategy in [ Convert.InitStrategy.Naive; Convert.InitStrategy.TaylorCalibrate ] do
    let options = { Convert.ConvertOptions.defaults strategy with Align = { Align.AlignOptions.defaults with Steps = 60 } }
    let student, layers = Convert.run be teacher trace kept options Convert.Hooks.none CancellationToken.None
    use studentOnDevice = new DeviceDecoder(be, student)
    let cosine = layers |> List.averageBy (fun l -> l.Fit.MeanTokenCosine)
    printfn "%s: zero-shot PPL %.2f (mean per-token cosine to the teacher's layer outputs %.3f)" (Convert.InitStrategy.name strategy) (perplexity studentOnDevice) cosine
