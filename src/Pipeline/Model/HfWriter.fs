/// Writes a teacher as a Hugging Face model directory: config.json and model.safetensors, or shards
/// model-0000i-of-0000n.safetensors with model.safetensors.index.json. Tensors are stored F32 or BF16
/// (round to nearest even, as torch does). Every file is written atomically.
module TaylorCalibrate.Pipeline.Model.HfWriter

open System
open System.Buffers.Binary
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open TaylorCalibrate.Pipeline.Io

/// Storage dtype of written tensors.
type StoreDType =
    | F32
    | BF16

/// fp32 → bf16 bits, rounding to nearest even; NaN stays a (quiet) NaN.
let toBf16 (x: float32) : uint16 =
    let bits = BitConverter.SingleToUInt32Bits x
    if Single.IsNaN x then uint16 ((bits >>> 16) ||| 0x40u)
    else
        let rounding = 0x7FFFu + ((bits >>> 16) &&& 1u)
        uint16 ((bits + rounding) >>> 16)

/// The value a tensor has after a BF16 round trip (for tests comparing against what the file holds).
let roundBf16 (x: float32) = BitConverter.UInt32BitsToSingle(uint32 (toBf16 x) <<< 16)

let private dtypeName = function F32 -> "F32" | BF16 -> "BF16"
let private elementBytes = function F32 -> 4L | BF16 -> 2L

/// Writes one safetensors file holding `tensors` in the given dtype.
let writeSafetensors (path: string) (dtype: StoreDType) (tensors: (string * int[] * float32[]) list) =
    let header = JsonObject()
    let meta = JsonObject()
    meta["format"] <- JsonValue.Create "pt"
    header["__metadata__"] <- meta
    let mutable offset = 0L
    for name, shape, data in tensors do
        let count = shape |> Array.fold (fun a d -> a * int64 d) 1L
        if count <> data.LongLength then invalidArg "tensors" $"tensor '{name}': shape has {count} elements, data {data.Length}"
        let e = JsonObject()
        e["dtype"] <- JsonValue.Create(dtypeName dtype)
        e["shape"] <- JsonArray(shape |> Array.map (fun d -> JsonValue.Create d :> JsonNode))
        let bytes = count * elementBytes dtype
        e["data_offsets"] <- JsonArray(JsonValue.Create offset, JsonValue.Create(offset + bytes))
        header[name] <- e
        offset <- offset + bytes
    let json = Text.Encoding.UTF8.GetBytes(header.ToJsonString())
    let padded = (json.Length + 7) / 8 * 8
    AtomicFile.write path (fun s ->
        let len = Array.zeroCreate<byte> 8
        BinaryPrimitives.WriteUInt64LittleEndian(Span len, uint64 padded)
        s.Write(len, 0, 8)
        s.Write(json, 0, json.Length)
        for _ in json.Length .. padded - 1 do s.WriteByte(byte ' ')
        for _, _, data in tensors do
            match dtype with
            | F32 -> s.Write(Runtime.InteropServices.MemoryMarshal.AsBytes(ReadOnlySpan data))
            | BF16 ->
                let buf = Array.zeroCreate<byte> (2 * data.Length)
                for i in 0 .. data.Length - 1 do
                    BinaryPrimitives.WriteUInt16LittleEndian(Span(buf, 2 * i, 2), toBf16 data[i])
                s.Write(buf, 0, buf.Length))

/// Writes config.json and the weights into `dir`. With `maxShardBytes`, tensors are packed in file order
/// into shards of at most that many bytes (a larger tensor gets a shard of its own) plus an index.
let write (dir: string) (teacher: Teacher) (dtype: StoreDType) (maxShardBytes: int64 option) =
    Directory.CreateDirectory dir |> ignore
    let c = teacher.Config
    AtomicFile.writeText (Path.Combine(dir, "config.json")) (HfConfig.toJson c (match dtype with F32 -> "float32" | BF16 -> "bfloat16"))
    let tensors = HfLayout.tensors c teacher.Weights
    let size (_, _, (a: float32[])) = a.LongLength * elementBytes dtype
    match maxShardBytes with
    | None -> writeSafetensors (Path.Combine(dir, HfCheckpoint.singleFile)) dtype tensors
    | Some limit ->
        let shards =
            tensors
            |> List.fold (fun (acc: (int64 * _ list) list) t ->
                match acc with
                | (bytes, current) :: rest when bytes + size t <= limit || List.isEmpty current -> (bytes + size t, t :: current) :: rest
                | _ -> (size t, [ t ]) :: acc) [ (0L, []) ]
            |> List.rev
            |> List.map (snd >> List.rev)
        let n = shards.Length
        let map = JsonObject()
        shards |> List.iteri (fun i shard ->
            let file = $"model-%05d{i + 1}-of-%05d{n}.safetensors"
            writeSafetensors (Path.Combine(dir, file)) dtype shard
            for name, _, _ in shard do map[name] <- JsonValue.Create file)
        let index = JsonObject()
        let meta = JsonObject()
        meta["total_size"] <- JsonValue.Create(tensors |> List.sumBy size)
        index["metadata"] <- meta
        index["weight_map"] <- map
        AtomicFile.writeText (Path.Combine(dir, HfCheckpoint.indexFile)) (index.ToJsonString(JsonSerializerOptions(WriteIndented = true)))
