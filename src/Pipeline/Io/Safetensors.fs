/// Reads and writes the safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
/// header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
/// then the raw little-endian data. Reads F32, F16 and BF16 (widened to fp32) and I32/I64 (ids); writes
/// F32 and I32, atomically. Every header field is validated before any data is trusted.
module TaylorCalibrate.Pipeline.Io.Safetensors

open System
open System.Buffers.Binary
open System.IO
open System.Text.Json
open TaylorCalibrate.Pipeline

/// One tensor's header entry. `Offset` is absolute in the file.
type Entry =
    { Name: string
      DType: string
      Shape: int[]
      Offset: int64
      Length: int64 }

/// A validated safetensors header.
type Header =
    { Path: string
      Entries: Entry list
      Metadata: Map<string, string> }

/// Tensor values as they are written.
type Data =
    | F32 of float32[]
    | I32 of int[]

/// Largest header we accept (the format's own limit is 100 MB).
let maxHeaderBytes = 100_000_000L

let private elementSize =
    function
    | "F32" | "I32" -> Some 4
    | "F16" | "BF16" -> Some 2
    | "I64" | "F64" -> Some 8
    | _ -> None

let private corrupt path why = Error(CorruptFile(path, why))

let private parseEntry path (dataStart: int64) (dataLen: int64) (p: JsonProperty) : Result<Entry, InputError> =
    let name = p.Name
    let v = p.Value
    let mutable dt = Unchecked.defaultof<JsonElement>
    let mutable sh = Unchecked.defaultof<JsonElement>
    let mutable off = Unchecked.defaultof<JsonElement>
    if v.ValueKind <> JsonValueKind.Object then corrupt path $"header entry '{name}' is not an object"
    elif not (v.TryGetProperty("dtype", &dt)) || dt.ValueKind <> JsonValueKind.String then
        corrupt path $"tensor '{name}' has no string 'dtype'"
    elif not (v.TryGetProperty("shape", &sh)) || sh.ValueKind <> JsonValueKind.Array then
        corrupt path $"tensor '{name}' has no 'shape' array"
    elif not (v.TryGetProperty("data_offsets", &off)) || off.ValueKind <> JsonValueKind.Array || off.GetArrayLength() <> 2 then
        corrupt path $"tensor '{name}' has no 'data_offsets' [begin, end]"
    else
        let dtype = dt.GetString()
        let dims = [ for d in sh.EnumerateArray() -> d ]
        let okDim (d: JsonElement) =
            let mutable x = 0L
            d.ValueKind = JsonValueKind.Number && d.TryGetInt64(&x) && x >= 0L && x <= int64 Int32.MaxValue
        let offs = [ for d in off.EnumerateArray() -> d ]
        let okOff (d: JsonElement) =
            let mutable x = 0L
            d.ValueKind = JsonValueKind.Number && d.TryGetInt64(&x) && x >= 0L
        match elementSize dtype with
        | None -> Error(UnsupportedDType(path, name, dtype))
        | Some _ when not (List.forall okDim dims) -> corrupt path $"tensor '{name}' has an invalid shape {sh.GetRawText()}"
        | Some _ when not (List.forall okOff offs) -> corrupt path $"tensor '{name}' has invalid data_offsets {off.GetRawText()}"
        | Some size ->
            let shape = dims |> List.map (fun d -> d.GetInt64() |> int) |> Array.ofList
            let b, e = offs[0].GetInt64(), offs[1].GetInt64()
            let count = shape |> Array.fold (fun acc d -> acc * int64 d) 1L
            if e < b || e > dataLen then
                corrupt path $"tensor '{name}' data_offsets [{b}, {e}] lie outside the {dataLen} data bytes (truncated file?)"
            elif e - b <> count * int64 size then
                corrupt path $"tensor '{name}' {dtype} shape {sh.GetRawText()} needs {count * int64 size} bytes, data_offsets give {e - b}"
            else
                Ok { Name = name; DType = dtype; Shape = shape; Offset = dataStart + b; Length = e - b }

/// Reads and validates the header of a safetensors file.
let readHeader (path: string) : Result<Header, InputError> =
    if not (File.Exists path) then Error(FileNotFound path) else
    use fs = File.OpenRead path
    let fileLen = fs.Length
    if fileLen < 8L then corrupt path $"file has {fileLen} bytes; a safetensors file starts with an 8-byte header length" else
    let lenBytes = Array.zeroCreate<byte> 8
    fs.ReadExactly(lenBytes, 0, 8)
    let n = BinaryPrimitives.ReadUInt64LittleEndian(ReadOnlySpan lenBytes)
    if n > uint64 maxHeaderBytes then corrupt path $"header length {n} exceeds the {maxHeaderBytes}-byte limit" 
    elif int64 n > fileLen - 8L then corrupt path $"header length {n} is larger than the file ({fileLen} bytes): truncated or not safetensors"
    else
    let hdr = Array.zeroCreate<byte> (int n)
    fs.ReadExactly(hdr, 0, int n)
    let dataStart = 8L + int64 n
    let dataLen = fileLen - dataStart
    let doc =
        try Ok(JsonDocument.Parse(ReadOnlyMemory hdr))
        with :? JsonException as e -> corrupt path $"header is not valid JSON ({e.Message})"
    match doc with
    | Error e -> Error e
    | Ok doc ->
    use doc = doc
    let root = doc.RootElement
    if root.ValueKind <> JsonValueKind.Object then corrupt path "header is not a JSON object" else
    let mutable meta = Map.empty
    let mutable result = Ok []
    for p in root.EnumerateObject() do
        match result with
        | Error _ -> ()
        | Ok acc ->
            if p.Name = "__metadata__" then
                if p.Value.ValueKind = JsonValueKind.Object then
                    for m in p.Value.EnumerateObject() do
                        meta <- meta.Add(m.Name, (if m.Value.ValueKind = JsonValueKind.String then m.Value.GetString() else m.Value.GetRawText()))
                else result <- corrupt path "__metadata__ is not an object"
            else
                result <- parseEntry path dataStart dataLen p |> Result.map (fun e -> e :: acc)
    match result with
    | Error e -> Error e
    | Ok entries ->
        let entries = List.rev entries
        // Overlapping tensors would alias each other's bytes: a corrupt or hostile file.
        let sorted = entries |> List.sortBy (fun e -> e.Offset)
        let overlap =
            sorted |> List.pairwise |> List.tryFind (fun (a, b) -> b.Offset < a.Offset + a.Length)
        match overlap with
        | Some(a, b) -> corrupt path $"tensors '{a.Name}' and '{b.Name}' overlap in the data section"
        | None -> Ok { Path = path; Entries = entries; Metadata = meta }

let private halfToSingle (bits: uint16) = float32 (BitConverter.UInt16BitsToHalf bits)
let private bf16ToSingle (bits: uint16) = BitConverter.Int32BitsToSingle(int bits <<< 16)

/// Reads one tensor widened to fp32 (F32, F16, BF16; F64 narrowed).
let readF32 (h: Header) (name: string) : Result<float32[], InputError> =
    match h.Entries |> List.tryFind (fun e -> e.Name = name) with
    | None -> Error(MissingTensor(h.Path, name))
    | Some e ->
        let bytes = Array.zeroCreate<byte> (int e.Length)
        use fs = File.OpenRead h.Path
        fs.Seek(e.Offset, SeekOrigin.Begin) |> ignore
        fs.ReadExactly(bytes, 0, bytes.Length)
        match e.DType with
        | "F32" ->
            let a = Array.zeroCreate<float32> (bytes.Length / 4)
            Buffer.BlockCopy(bytes, 0, a, 0, bytes.Length)
            if not BitConverter.IsLittleEndian then invalidOp "big-endian hosts are not supported"
            Ok a
        | "F16" -> Ok(Array.init (bytes.Length / 2) (fun i -> halfToSingle (BinaryPrimitives.ReadUInt16LittleEndian(ReadOnlySpan(bytes, 2 * i, 2)))))
        | "BF16" -> Ok(Array.init (bytes.Length / 2) (fun i -> bf16ToSingle (BinaryPrimitives.ReadUInt16LittleEndian(ReadOnlySpan(bytes, 2 * i, 2)))))
        | "F64" -> Ok(Array.init (bytes.Length / 8) (fun i -> float32 (BinaryPrimitives.ReadDoubleLittleEndian(ReadOnlySpan(bytes, 8 * i, 8)))))
        | d ->
            Error(UnsupportedDType(h.Path, name, d + " (expected a float tensor)"))

/// Reads an integer tensor (I32 or I64, or whole-valued floats) as int32.
let readI32 (h: Header) (name: string) : Result<int[], InputError> =
    match h.Entries |> List.tryFind (fun e -> e.Name = name) with
    | None -> Error(MissingTensor(h.Path, name))
    | Some e ->
        let bytes = Array.zeroCreate<byte> (int e.Length)
        use fs = File.OpenRead h.Path
        fs.Seek(e.Offset, SeekOrigin.Begin) |> ignore
        fs.ReadExactly(bytes, 0, bytes.Length)
        match e.DType with
        | "I32" -> Ok(Array.init (bytes.Length / 4) (fun i -> BinaryPrimitives.ReadInt32LittleEndian(ReadOnlySpan(bytes, 4 * i, 4))))
        | "I64" ->
            let vals = Array.init (bytes.Length / 8) (fun i -> BinaryPrimitives.ReadInt64LittleEndian(ReadOnlySpan(bytes, 8 * i, 8)))
            match vals |> Array.tryFind (fun v -> v < int64 Int32.MinValue || v > int64 Int32.MaxValue) with
            | Some v -> Error(InvalidValue(name, $"I64 value {v} does not fit in int32"))
            | None -> Ok(vals |> Array.map int)
        | d -> Error(UnsupportedDType(h.Path, name, d + " (expected I32 or I64)"))

/// Writes tensors (in the given order) and optional metadata atomically (temp file + rename).
let write (path: string) (metadata: Map<string, string>) (tensors: (string * int[] * Data) list) =
    let names = tensors |> List.map (fun (n, _, _) -> n)
    if List.distinct names |> List.length <> names.Length then invalidArg "tensors" "duplicate tensor names"
    for (n, shape, data) in tensors do
        let count = shape |> Array.fold (fun acc d -> acc * int64 d) 1L
        let len = match data with F32 a -> a.LongLength | I32 a -> a.LongLength
        if count <> len then invalidArg "tensors" $"tensor '{n}': shape [{String.Join(',', shape)}] has {count} elements, data has {len}"
    use ms = new MemoryStream()
    use w = new Utf8JsonWriter(ms)
    w.WriteStartObject()
    if not metadata.IsEmpty then
        w.WriteStartObject "__metadata__"
        for KeyValue(k, v) in metadata do w.WriteString(k, v)
        w.WriteEndObject()
    let mutable offset = 0L
    for (n, shape, data) in tensors do
        let bytes = match data with F32 a -> 4L * a.LongLength | I32 a -> 4L * a.LongLength
        w.WriteStartObject n
        w.WriteString("dtype", (match data with F32 _ -> "F32" | I32 _ -> "I32"))
        w.WriteStartArray "shape"
        for d in shape do w.WriteNumberValue d
        w.WriteEndArray()
        w.WriteStartArray "data_offsets"
        w.WriteNumberValue offset
        w.WriteNumberValue(offset + bytes)
        w.WriteEndArray()
        w.WriteEndObject()
        offset <- offset + bytes
    w.WriteEndObject()
    w.Flush()
    // Pad the header with spaces to a multiple of 8 so the data section is aligned (as the reference writer does).
    let json = ms.ToArray()
    let padded = (json.Length + 7) / 8 * 8
    AtomicFile.write path (fun s ->
        let len = Array.zeroCreate<byte> 8
        BinaryPrimitives.WriteUInt64LittleEndian(Span len, uint64 padded)
        s.Write(len, 0, 8)
        s.Write(json, 0, json.Length)
        for _ in json.Length .. padded - 1 do s.WriteByte(byte ' ')
        for (_, _, data) in tensors do
            match data with
            | F32 a -> s.Write(Runtime.InteropServices.MemoryMarshal.AsBytes(ReadOnlySpan a))
            | I32 a -> s.Write(Runtime.InteropServices.MemoryMarshal.AsBytes(ReadOnlySpan a)))
