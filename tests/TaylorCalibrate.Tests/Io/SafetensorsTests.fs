/// Safetensors: round trips, widening of F16/BF16, and rejection of corrupt files with a message that
/// names the problem.
module TaylorCalibrate.Tests.Io.SafetensorsTests

open System
open System.IO
open System.Text
open Expecto
open TaylorCalibrate.Pipeline
open TaylorCalibrate.Pipeline.Io
open TaylorCalibrate.Tests

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "tc-tests-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory d |> ignore
    d

/// A raw safetensors file from a header string and data bytes (to build corrupt files on purpose).
let private rawFile (path: string) (header: string) (data: byte[]) =
    let h = Encoding.UTF8.GetBytes header
    use fs = File.Create path
    fs.Write(BitConverter.GetBytes(uint64 h.Length), 0, 8)
    fs.Write(h, 0, h.Length)
    fs.Write(data, 0, data.Length)

let private expectCorrupt (path: string) (fragment: string) =
    match Safetensors.readHeader path with
    | Ok _ -> failtest $"accepted a corrupt file (expected an error mentioning '{fragment}')"
    | Error e ->
        let msg = InputError.describe e
        Expect.stringContains msg path "message names the file"
        Expect.stringContains msg fragment "message says what is wrong"

[<Tests>]
let tests =
    testList "Safetensors" [
        test "F32 and I32 round trip bit-exactly, in order, with metadata" {
            let dir = tempDir ()
            let p = Path.Combine(dir, "a.safetensors")
            let a = Rand.normal 1 1.0 (3 * 5)
            let ids = [| 1; -7; 403 |]
            let edge = [| nanf; infinityf; -0.0f; Single.Epsilon |]
            Safetensors.write p (Map [ "format", "pt" ])
                [ "a", [| 3; 5 |], Safetensors.F32 a
                  "ids", [| 3 |], Safetensors.I32 ids
                  "edge", [| 2; 2 |], Safetensors.F32 edge
                  "scalar", [||], Safetensors.F32 [| 2.5f |] ]
            let h = Safetensors.readHeader p |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            Expect.equal (h.Entries |> List.map (fun e -> e.Name)) [ "a"; "ids"; "edge"; "scalar" ] "order kept"
            Expect.equal (h.Entries |> List.map (fun e -> e.Shape)) [ [| 3; 5 |]; [| 3 |]; [| 2; 2 |]; [||] ] "shapes"
            Expect.equal h.Metadata[ "format" ] "pt" "metadata"
            let bits (x: float32[]) = x |> Array.map BitConverter.SingleToInt32Bits
            Expect.equal (Safetensors.readF32 h "a" |> Result.map bits) (Ok(bits a)) "a"
            Expect.equal (Safetensors.readF32 h "edge" |> Result.map bits) (Ok(bits edge)) "edge values"
            Expect.equal (Safetensors.readI32 h "ids") (Ok ids) "ids"
            Expect.equal (Safetensors.readF32 h "scalar") (Ok [| 2.5f |]) "scalar"
            Expect.equal ((8L + BitConverter.ToInt64(File.ReadAllBytes p, 0)) % 8L) 0L "data section 8-byte aligned"
            Expect.equal (Directory.GetFiles dir |> Array.length) 1 "no temporary file left behind"
        }

        test "F16 and BF16 are widened exactly" {
            let dir = tempDir ()
            let p = Path.Combine(dir, "h.safetensors")
            let values = [| 1.0f; -2.5f; 0.0078125f; 65504.0f |] // exactly representable in both
            let f16 = values |> Array.collect (fun v -> BitConverter.GetBytes(BitConverter.HalfToUInt16Bits(Half.op_Explicit v)))
            let bf16 = values |> Array.collect (fun v -> BitConverter.GetBytes(uint16 (BitConverter.SingleToUInt32Bits v >>> 16)))
            rawFile p """{"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}}""" (Array.append f16 bf16)
            let h = Safetensors.readHeader p |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            Expect.equal (Safetensors.readF32 h "h") (Ok values) "F16"
            Expect.equal (Safetensors.readF32 h "b") (Ok(values |> Array.map (fun v -> BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits v &&& 0xFFFF0000u)))) "BF16"
        }

        test "a missing tensor is named" {
            let dir = tempDir ()
            let p = Path.Combine(dir, "m.safetensors")
            Safetensors.write p Map.empty [ "x", [| 1 |], Safetensors.F32 [| 1.0f |] ]
            let h = Safetensors.readHeader p |> Result.defaultWith (fun e -> failtest (InputError.describe e))
            match Safetensors.readF32 h "y" with
            | Error(MissingTensor(_, "y")) -> ()
            | other -> failtest $"expected MissingTensor y, got %A{other}"
        }

        testList "corrupt files are rejected" [
            let dir = tempDir ()
            let f name = Path.Combine(dir, name)
            test "shorter than the length prefix" {
                File.WriteAllBytes(f "short", [| 1uy; 2uy |])
                expectCorrupt (f "short") "8-byte header length" }
            test "header larger than the file" {
                use fs = File.Create(f "big")
                fs.Write(BitConverter.GetBytes 5000UL, 0, 8)
                fs.Write(Array.zeroCreate 10, 0, 10)
                fs.Close()
                expectCorrupt (f "big") "larger than the file" }
            test "header is not JSON" {
                rawFile (f "json") "{not json" [||]
                expectCorrupt (f "json") "not valid JSON" }
            test "unknown dtype" {
                rawFile (f "dtype") """{"x":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}}""" (Array.zeroCreate 4)
                match Safetensors.readHeader (f "dtype") with
                | Error(UnsupportedDType(_, "x", "Q4")) -> ()
                | other -> failtest $"expected UnsupportedDType, got %A{other}" }
            test "truncated data" {
                rawFile (f "trunc") """{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""" (Array.zeroCreate 8)
                expectCorrupt (f "trunc") "outside" }
            test "byte count disagrees with the shape" {
                rawFile (f "count") """{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}""" (Array.zeroCreate 16)
                expectCorrupt (f "count") "needs 12 bytes" }
            test "overlapping tensors" {
                rawFile (f "overlap") """{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""" (Array.zeroCreate 12)
                expectCorrupt (f "overlap") "overlap" }
            test "negative dimension" {
                rawFile (f "neg") """{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""" (Array.zeroCreate 4)
                expectCorrupt (f "neg") "invalid shape" }
            test "missing file" {
                match Safetensors.readHeader (f "nope") with
                | Error(FileNotFound _) -> ()
                | other -> failtest $"expected FileNotFound, got %A{other}" }
        ]

        test "a failed write leaves no file behind" {
            let dir = tempDir ()
            let p = Path.Combine(dir, "bad.safetensors")
            Expect.throws (fun () -> Safetensors.write p Map.empty [ "x", [| 2 |], Safetensors.F32 [| 1.0f |] ]) "shape/data mismatch"
            Expect.isEmpty (Directory.GetFiles dir) "nothing written"
        }
    ]
