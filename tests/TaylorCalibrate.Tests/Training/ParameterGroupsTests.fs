/// Parameter groups (Training/ParameterGroups.fs): first match wins, the Phase-2 and Stage-2 presets claim
/// the names the model files use, and every misconfiguration throws naming the parameter or rule.
module TaylorCalibrate.Tests.Training.ParameterGroupsTests

open System
open Expecto
open TaylorCalibrate.Backend
open TaylorCalibrate.Pipeline.Training
open TaylorCalibrate.Pipeline.Training.ParameterGroups
open TaylorCalibrate.Tests

/// Parameters with the given names (1-element tensors on the CPU backend; only names matter here).
let private withParameters (names: string list) (f: Parameter list -> unit) =
    let be = Backends.cpu.Get()
    let ps = names |> List.map (fun n -> { Name = n; Value = be.Allocate [| 1 |]; Grad = be.Allocate [| 1 |] })
    try f ps
    finally
        for p in ps do
            p.Value.Dispose()
            p.Grad.Dispose()

/// Throws unless `f` raises an ArgumentException whose message contains `mentions`.
let private expectArgumentMentioning (mentions: string) (f: unit -> unit) (what: string) =
    try
        f ()
        failtest $"{what}: accepted (expected an ArgumentException mentioning '{mentions}')"
    with :? ArgumentException as e ->
        Expect.stringContains e.Message mentions $"{what}: the message names it"

let private hyper lr wd = Train { LearningRate = lr; WeightDecay = wd }

let private gdnLayer i =
    let p = $"model.layers.{i}.attn."
    [ p + "q_proj.weight"; p + "k_proj.weight"; p + "v_proj.weight"; p + "g_proj.weight"; p + "a_proj.weight"
      p + "b_proj.weight"; p + "A_log"; p + "dt_bias"; p + "o_norm.weight"; p + "o_proj.weight" ]

[<Tests>]
let tests =
    testList "Training.ParameterGroups" [
        test "the first matching rule wins and order is kept" {
            withParameters [ "a.attn.w"; "b.mlp.w"; "c.attn.bias" ] (fun ps ->
                let rules =
                    [ { Group = "attn-bias"; Pattern = EndsWith "attn.bias"; Treatment = hyper 3f 0f }
                      { Group = "attn"; Pattern = Contains "attn"; Treatment = hyper 2f 0.1f }
                      { Group = "rest"; Pattern = Everything; Treatment = Freeze } ]
                let a = assign rules ps
                Expect.equal (a |> List.map (fun x -> x.Parameter.Name)) [ "a.attn.w"; "b.mlp.w"; "c.attn.bias" ] "parameter order"
                Expect.equal (a |> List.map (fun x -> x.Group)) [ "attn"; "rest"; "attn-bias" ] "groups"
                Expect.equal a[0].Treatment (hyper 2f 0.1f) "treatment of the attn group")
        }

        test "Phase-2 preset: projections, gates and frozen output on a GDN layer" {
            withParameters (gdnLayer 3) (fun ps ->
                let a = assign (Presets.phase2 1e-4f 1e-3f 0.01f) ps
                let groupOf n = (a |> List.find (fun x -> x.Parameter.Name = "model.layers.3.attn." + n)).Group
                for n in [ "q_proj.weight"; "k_proj.weight"; "v_proj.weight" ] do Expect.equal (groupOf n) "projections" n
                for n in [ "g_proj.weight"; "a_proj.weight"; "b_proj.weight"; "A_log"; "dt_bias" ] do Expect.equal (groupOf n) "gates" n
                for n in [ "o_norm.weight"; "o_proj.weight" ] do Expect.equal (groupOf n) "frozen" n)
        }

        test "Stage-2 preset: names containing attn (attn_norm too) versus the rest" {
            withParameters [ "model.embeddings.weight"; "model.layers.0.attn_norm.weight"; "model.layers.0.attn.q_proj.weight"
                             "model.layers.0.mlp.up_proj.weight"; "model.norm.weight"; "lm_head.weight" ] (fun ps ->
                let a = assign (Presets.stage2 1e-4f 7e-6f 0.01f) ps
                Expect.equal (a |> List.map (fun x -> x.Group)) [ "rest"; "attn"; "attn"; "rest"; "rest"; "rest" ] "groups"
                Expect.equal a[1].Treatment (hyper 1e-4f 0.01f) "attn rate"
                Expect.equal a[0].Treatment (hyper 7e-6f 0.01f) "rest rate")
        }

        test "a parameter no rule matches is rejected by name" {
            withParameters (gdnLayer 0 @ [ "model.layers.0.mlp.up_proj.weight" ]) (fun ps ->
                expectArgumentMentioning "model.layers.0.mlp.up_proj.weight" (fun () -> assign (Presets.phase2 1e-4f 1e-3f 0.01f) ps |> ignore)
                    "an MLP weight under the Phase-2 rules")
        }

        test "a rule that matches nothing is rejected by name (typo in a pattern)" {
            withParameters [ "x.attn.w"; "y.mlp.w" ] (fun ps ->
                let rules =
                    [ { Group = "atten"; Pattern = Contains "atten."; Treatment = hyper 1f 0f }
                      { Group = "rest"; Pattern = Everything; Treatment = hyper 1f 0f } ]
                expectArgumentMentioning "'atten'" (fun () -> assign rules ps |> ignore) "misspelt pattern")
        }

        test "invalid rules and duplicate names are rejected" {
            withParameters [ "p.w"; "p.w" ] (fun ps ->
                expectArgumentMentioning "'p.w'" (fun () -> assign (Presets.single 1f 0f) ps |> ignore) "duplicate parameter")
            withParameters [ "p.w" ] (fun ps ->
                let one t = [ { Group = "g"; Pattern = Everything; Treatment = t } ]
                expectArgumentMentioning "learning rate" (fun () -> assign (one (hyper -1f 0f)) ps |> ignore) "negative rate"
                expectArgumentMentioning "learning rate" (fun () -> assign (one (hyper nanf 0f)) ps |> ignore) "NaN rate"
                expectArgumentMentioning "weight decay" (fun () -> assign (one (hyper 1f -0.1f)) ps |> ignore) "negative decay"
                expectArgumentMentioning "empty pattern" (fun () ->
                    assign [ { Group = "g"; Pattern = Contains ""; Treatment = Freeze } ] ps |> ignore) "empty pattern text"
                expectArgumentMentioning "defined twice" (fun () -> assign (one Freeze @ one Freeze) ps |> ignore) "duplicate group"
                expectArgumentMentioning "no parameter groups" (fun () -> assign [] ps |> ignore) "no rules")
        }
    ]
