/// Parameter groups: which learning rate and weight decay each trainable tensor gets, chosen by its reference
/// name through an ordered list of rules (the first rule that matches wins). Phase-2 alignment
/// (docs/method.md §5.3) trains q/k/v_proj at 1e-4 and the gates at 1e-3 with o_proj/o_norm frozen;
/// Stage 2 (docs/method.md §7) trains names containing "attn" at 1e-4 and the rest at 7e-6.
/// Misconfiguration is rejected when the groups are built, never discovered mid-run: a parameter that no
/// rule matches, a rule that matches no parameter (a typo in a pattern), duplicate names and invalid rates
/// all throw an ArgumentException that names the offending parameter or rule.
module TaylorCalibrate.Pipeline.Training.ParameterGroups

open System

/// How a rule recognises parameters by their reference name (ordinal, case-sensitive).
type NamePattern =
    /// The name contains this text, e.g. "attn" (Stage 2).
    | Contains of string
    /// The name ends with this text, e.g. "q_proj.weight".
    | EndsWith of string
    /// The name is exactly this text.
    | Exactly of string
    /// Any one of these patterns.
    | AnyOf of NamePattern list
    /// Every name: a catch-all, normally the last rule.
    | Everything

/// Learning rate and decoupled weight decay of a trained group.
type GroupHyper =
    { LearningRate: float32
      WeightDecay: float32 }

/// What a rule does with the parameters it claims.
type Treatment =
    /// Trained by the optimizer with these settings (the learning rate is the schedule's peak).
    | Train of GroupHyper
    /// Never updated; its gradient is neither clipped nor read.
    | Freeze

/// One rule: a group name (used in reports and errors), a pattern, and the treatment of what it matches.
type GroupRule =
    { Group: string
      Pattern: NamePattern
      Treatment: Treatment }

/// A parameter with the rule that claimed it.
type Assigned =
    { Parameter: Parameter
      Group: string
      Treatment: Treatment }

/// Whether `name` matches the pattern.
let rec matches (pattern: NamePattern) (name: string) =
    match pattern with
    | Contains s -> name.Contains(s, StringComparison.Ordinal)
    | EndsWith s -> name.EndsWith(s, StringComparison.Ordinal)
    | Exactly s -> name = s
    | AnyOf ps -> ps |> List.exists (fun p -> matches p name)
    | Everything -> true

/// The pattern as text, for messages (e.g. `ends with "q_proj.weight"`).
let rec describePattern (pattern: NamePattern) =
    match pattern with
    | Contains s -> $"contains \"{s}\""
    | EndsWith s -> $"ends with \"{s}\""
    | Exactly s -> $"is \"{s}\""
    | AnyOf ps -> ps |> List.map describePattern |> String.concat " or "
    | Everything -> "any name"

let rec private checkPattern (group: string) (pattern: NamePattern) =
    match pattern with
    | Contains s | EndsWith s | Exactly s ->
        if String.IsNullOrEmpty s then
            invalidArg "rules" $"parameter group '{group}': an empty pattern text would match every name; use Everything"
    | AnyOf [] -> invalidArg "rules" $"parameter group '{group}': AnyOf with no patterns matches nothing"
    | AnyOf ps -> ps |> List.iter (checkPattern group)
    | Everything -> ()

let private checkRule (r: GroupRule) =
    if String.IsNullOrWhiteSpace r.Group then invalidArg "rules" "a parameter group has an empty name"
    checkPattern r.Group r.Pattern
    match r.Treatment with
    | Freeze -> ()
    | Train h ->
        let finiteNonNegative (v: float32) = Single.IsFinite v && v >= 0f
        if not (finiteNonNegative h.LearningRate) then
            invalidArg "rules" $"parameter group '{r.Group}': learning rate {h.LearningRate} must be finite and ≥ 0"
        if not (finiteNonNegative h.WeightDecay) then
            invalidArg "rules" $"parameter group '{r.Group}': weight decay {h.WeightDecay} must be finite and ≥ 0"

/// Assigns every parameter to the first rule whose pattern matches its name, keeping the parameters' order.
/// Throws ArgumentException when the rules are invalid (empty pattern text, duplicate group names, negative or
/// non-finite rates), two parameters share a name, a parameter matches no rule, or a rule matches no parameter.
let assign (rules: GroupRule list) (parameters: Parameter list) : Assigned list =
    if rules.IsEmpty then invalidArg "rules" "no parameter groups given"
    rules |> List.iter checkRule
    match rules |> List.countBy (fun r -> r.Group) |> List.tryFind (fun (_, n) -> n > 1) with
    | Some(g, _) -> invalidArg "rules" $"parameter group '{g}' is defined twice"
    | None -> ()
    match parameters |> List.countBy (fun p -> p.Name) |> List.tryFind (fun (_, n) -> n > 1) with
    | Some(name, _) -> invalidArg "parameters" $"parameter '{name}' appears twice"
    | None -> ()
    let assigned =
        parameters |> List.map (fun p ->
            match rules |> List.tryFind (fun r -> matches r.Pattern p.Name) with
            | Some r -> { Parameter = p; Group = r.Group; Treatment = r.Treatment }
            | None ->
                let tried = rules |> List.map (fun r -> $"{r.Group}: {describePattern r.Pattern}") |> String.concat "; "
                invalidArg "parameters" $"parameter '{p.Name}' matches no parameter group ({tried})")
    for r in rules do
        if not (assigned |> List.exists (fun a -> a.Group = r.Group)) then
            invalidArg "rules" $"parameter group '{r.Group}' ({describePattern r.Pattern}) matches no parameter (a typo in the pattern, or an earlier rule claims them all)"
    assigned

/// The rules of the method's training stages.
module Presets =
    /// Phase-2 alignment of one GDN layer (docs/method.md §5.3): q/k/v_proj at `lrProjections`; A_log,
    /// dt_bias, a/b/g_proj at `lrGates`; o_proj and o_norm frozen; one weight decay for both trained groups.
    let phase2 (lrProjections: float32) (lrGates: float32) (weightDecay: float32) : GroupRule list =
        [ { Group = "projections"
            Pattern = AnyOf [ EndsWith "q_proj.weight"; EndsWith "k_proj.weight"; EndsWith "v_proj.weight" ]
            Treatment = Train { LearningRate = lrProjections; WeightDecay = weightDecay } }
          { Group = "gates"
            Pattern =
              AnyOf [ EndsWith "A_log"; EndsWith "dt_bias"; EndsWith "a_proj.weight"; EndsWith "b_proj.weight"
                      EndsWith "g_proj.weight" ]
            Treatment = Train { LearningRate = lrGates; WeightDecay = weightDecay } }
          { Group = "frozen"
            Pattern = AnyOf [ EndsWith "o_proj.weight"; EndsWith "o_norm.weight" ]
            Treatment = Freeze } ]

    /// Stage 2 (docs/method.md §7): every name containing "attn" (GDN, kept attention, attn_norm) at
    /// `lrAttention`, everything else at `lrRest`, one weight decay.
    let stage2 (lrAttention: float32) (lrRest: float32) (weightDecay: float32) : GroupRule list =
        [ { Group = "attn"; Pattern = Contains "attn"; Treatment = Train { LearningRate = lrAttention; WeightDecay = weightDecay } }
          { Group = "rest"; Pattern = Everything; Treatment = Train { LearningRate = lrRest; WeightDecay = weightDecay } } ]

    /// One group for every parameter (train-teacher).
    let single (learningRate: float32) (weightDecay: float32) : GroupRule list =
        [ { Group = "all"; Pattern = Everything; Treatment = Train { LearningRate = learningRate; WeightDecay = weightDecay } } ]
