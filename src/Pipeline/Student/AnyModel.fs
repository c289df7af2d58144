/// A model path the CLI accepts anywhere a model is evaluated: a teacher (Hugging Face directory, llama2.c
/// .bin) or a student directory (StudentIo). One dispatch, so commands stay unaware of the difference.
module TaylorCalibrate.Pipeline.Student.AnyModel

open System
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Eval
open TaylorCalibrate.Pipeline.Model
open TaylorCalibrate.Pipeline.Text

/// A loaded model of either kind.
type AnyModel =
    | TeacherModel of Teacher
    | StudentModel of Student

/// Loads a teacher or a student from `path`.
let load (path: string) : Result<AnyModel, InputError> =
    if StudentIo.isStudentDirectory path then StudentIo.load path |> Result.map StudentModel
    else ModelFiles.loadTeacher path |> Result.map TeacherModel

/// The model's shape.
let config = function TeacherModel t -> t.Config | StudentModel s -> s.Config

/// "llama", "student (gdn_v4, kept [0])", ...
let describe = function
    | TeacherModel t -> ModelFamily.modelType t.Config.Family
    | StudentModel s -> $"student gdn_v4 of a {ModelFamily.modelType s.Config.Family} teacher, kept layers {s.Kept}, init {s.Init}"

/// The model's tokenizer (explicit file, else the one beside or inside the model).
let tokenizerFor (path: string) (m: AnyModel) (explicitPath: string option) : Result<ITokenizer, InputError> =
    match m, explicitPath with
    | TeacherModel t, _ -> ModelFiles.tokenizerFor path t.Config explicitPath
    | StudentModel s, Some p -> ModelFiles.tokenizerFor path s.Config (Some p)
    | StudentModel s, None ->
        StudentIo.tokenizerPath path
        |> Result.bind (fun p -> ModelFiles.loadTokenizer p |> Result.bind (fun t -> ModelFiles.checkVocab t p s.Config))

/// The model uploaded to `be` as a decoder (dispose it to free the device memory).
let decoderOn (be: IBackend) (m: AnyModel) : DeviceDecoder =
    match m with
    | TeacherModel t -> new DeviceDecoder(be, t)
    | StudentModel s -> new DeviceDecoder(be, s)

/// Uploads the model to `be`; dispose the second value to free it.
let openOn (be: IBackend) (m: AnyModel) : Perplexity.LogitsModel * IDisposable =
    let d = decoderOn be m
    Perplexity.decoderModel d, (d :> IDisposable)
