/// IBackend.Embedding and EmbeddingBackward on every backend against the double reference
/// (Reference/EmbeddingReference.fs): exact gathers, scatter-add that accumulates into dtable with many
/// repeated ids, determinism of the backward (no float atomics), ids out of range (an input error on every
/// backend, raised before any work is queued), argument errors. Maths: docs/kernels.md §4 (Embedding).
module TaylorCalibrate.Tests.Ops.EmbeddingTests

open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Tests
open TaylorCalibrate.Tests.Numeric
open TaylorCalibrate.Tests.Reference

/// dtable, relative RMS: each row is the old row plus up to `repeats` rows of dy, an fp32 sum of
/// repeats + 1 terms: 2e-7 + 1e-7·√(repeats + 1).
let private dtableTol (repeats: int) = { RelRms = fp32Accumulation 2e-7 1e-7 (repeats + 1); MaxAbs = 0.0 }

/// (V, D, N): one row; odd sizes; a vocabulary of 1031; few rows hit by many ids.
let private cases = [ 1, 1, 1; 50, 7, 300; 1031, 65, 129; 3, 33, 1000 ]

let private maxRepeats (ids: int[]) = ids |> Array.countBy id |> Array.map snd |> Array.max

let private embeddingTests (h: Backends.BackendHandle) (v: int, d: int, n: int) =
    let table = Rand.normal (v + d) 1.0 (v * d)
    let ids = Rand.ints (n + 1) v n
    let dy = Rand.normal (n + 2) 1.0 (n * d)
    let dtable0 = Rand.normal (n + 3) 1.0 (v * d)
    [ test $"gather is an exact copy V={v} D={d} N={n}" {
          let be = h.Get()
          use tt = be.FromArray(table, v, d)
          use ti = be.FromInts(ids, n)
          use y = be.FromArray(Array.create (n * d) 777.0f, n, d)
          be.Embedding(tt, ti, y)
          bitEqual (ids |> Array.collect (fun i -> table[i * d .. i * d + d - 1])) (y.ToArray()) "y" }
      test $"scatter-add accumulates into dtable V={v} D={d} N={n}" {
          let be = h.Get()
          use ti = be.FromInts(ids, n)
          use tdy = be.FromArray(dy, n, d)
          use dtable = be.FromArray(dtable0, v, d)
          be.EmbeddingBackward(ti, tdy, dtable)
          let expected = Embedding.scatterAdd ids (toDouble dy) d (toDouble dtable0)
          closeTo (dtableTol (maxRepeats ids)) expected (dtable.ToArray()) "dtable (old + scattered dy)" } ]

let private determinismTests (h: Backends.BackendHandle) =
    [ for name, v, ids in [ "few rows, many repeats", 3, Rand.ints 7 3 4000; "one row hit 2000 times", 5, Array.create 2000 2 ] ->
        test $"backward twice gives the same bits ({name})" {
            let be = h.Get()
            let d = 65
            let n = ids.Length
            let dy = Rand.normal 8 1.0 (n * d)
            let dtable0 = Rand.normal 9 1.0 (v * d)
            let run () =
                use ti = be.FromInts(ids, n)
                use tdy = be.FromArray(dy, n, d)
                use dtable = be.FromArray(dtable0, v, d)
                be.EmbeddingBackward(ti, tdy, dtable)
                dtable.ToArray()
            let first = run ()
            bitEqual first (run ()) "dtable"
            closeTo (dtableTol (maxRepeats ids)) (Embedding.scatterAdd ids (toDouble dy) d (toDouble dtable0)) first "dtable" } ]

let private outOfRangeTests (h: Backends.BackendHandle) =
    let v, d = 5, 3
    let table = Rand.normal 10 1.0 (v * d)
    // One behaviour on every backend (IBackend.Embedding): an input error naming 'ids', raised before any
    // work is queued, so y keeps its old contents.
    [ for ids, what in [ [| 0; 5; 4; 1 |], "an id = V"; [| 0; 1; -1; 2 |], "a negative id" ] do
        yield test $"{what} throws naming 'ids', before y is touched" {
            let be = h.Get()
            use tt = be.FromArray(table, v, d)
            use ti = be.FromInts(ids, 4)
            use y = be.FromArray(Array.create (4 * d) 777.0f, 4, d)
            Backends.expectArgumentError "ids" "" (fun () -> be.Embedding(tt, ti, y)) "Embedding"
            bitEqual (Array.create (4 * d) 777.0f) (y.ToArray()) "y untouched" }
        yield test $"{what} throws in the backward too, naming 'ids'" {
            let be = h.Get()
            use ti = be.FromInts(ids, 4)
            use dy = be.Allocate [| 4; d |]
            use dtable = be.Allocate [| v; d |]
            Backends.expectArgumentError "ids" "" (fun () -> be.EmbeddingBackward(ti, dy, dtable)) "EmbeddingBackward" }
      // Ids written on the device (not uploaded) are checked too: the range is then read back.
      yield test "ids copied on the device are checked as well" {
          let be = h.Get()
          use tt = be.FromArray(table, v, d)
          use src = be.FromInts([| 0; 7; 1; 2 |], 4)
          use ti = be.FromInts([| 0; 0; 0; 0 |], 4)
          be.Copy(src, 0L, ti, 0L, 4L)
          use y = be.Allocate [| 4; d |]
          Backends.expectArgumentError "ids" "7" (fun () -> be.Embedding(tt, ti, y)) "Embedding" } ]

let private errorTests (h: Backends.BackendHandle) =
    [ test "y with the wrong row length names 'y'" {
          let be = h.Get()
          use table = be.Allocate [| 5; 3 |]
          use ids = be.FromInts([| 0; 1 |], 2)
          use y = be.Allocate [| 2; 4 |]
          Backends.expectArgumentError "y" "[2,4]" (fun () -> be.Embedding(table, ids, y)) "Embedding" }
      test "F32 ids name 'ids'" {
          let be = h.Get()
          use table = be.Allocate [| 5; 3 |]
          use ids = be.Allocate [| 2 |]
          use y = be.Allocate [| 2; 3 |]
          Backends.expectArgumentError "ids" "" (fun () -> be.Embedding(table, ids, y)) "Embedding" }
      test "dy with more rows than ids names 'dy'" {
          let be = h.Get()
          use ids = be.FromInts([| 0; 1 |], 2)
          use dy = be.Allocate [| 3; 3 |]
          use dtable = be.Allocate [| 5; 3 |]
          Backends.expectArgumentError "dy" "[3,3]" (fun () -> be.EmbeddingBackward(ids, dy, dtable)) "EmbeddingBackward" } ]

[<Tests>]
let tests =
    // Sequenced: the backends are shared by the whole run and are not thread-safe (one caller at a time).
    testSequenced <| testList "Ops.Embedding" [
        for h in Backends.all ->
            testList h.Name [
                testList "gather and scatter" [ for c in cases do yield! embeddingTests h c ]
                testList "determinism" (determinismTests h)
                testList "ids out of range" (outOfRangeTests h)
                testList "errors" (errorTests h) ] ]
